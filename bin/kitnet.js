#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript under dist/.
import('../dist/api/cli/main.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND') {
    console.error('kitnet: not built yet; run `bash scripts/setup.sh` first');
    process.exit(1);
  }
  throw err;
});
