{
  "targets": [
    {
      "target_name": "tpm_native",
      "sources": [
        "src/addon.cc",
        "src/context.cc",
        "src/engine.cc",
        "src/errors.cc",
        "src/sd-notify.cc",
        "src/worker.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "OPENSSL_SUPPRESS_DEPRECATED"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "libraries": ["-ltss2-esys", "-ltss2-sys", "-ltss2-tctildr", "-ltss2-mu", "-ltss2-rc"]
    }
  ]
}
