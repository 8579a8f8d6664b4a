{
  "targets": [
    {
      "target_name": "ebsd_native",
      "sources": ["src/addon.c", "src/async-job.c", "src/xts.c", "src/aes-ctr.c", "src/aes-gcm.c", "src/peercred.c", "src/io.c", "src/flock.c", "src/writeback.c", "src/harden.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"],
      "libraries": ["-lgcrypt"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"]
    }
  ]
}
