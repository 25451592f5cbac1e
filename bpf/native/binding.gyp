{
  "targets": [
    {
      "target_name": "kitnet_bpf",
      "sources": ["src/addon.c", "src/objects.c", "src/maps.c", "src/links.c", "src/ringbuf.c", "src/netns.c", "src/packet.c", "src/udp.c", "src/dnsfast.c"],
      "cflags": ["-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-O2"],
      "cflags_c": ["<!@(pkg-config --cflags libbpf)"],
      "libraries": ["<!@(pkg-config --libs libbpf)", "-lpthread"]
    }
  ]
}
