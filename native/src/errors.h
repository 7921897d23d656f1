// Error values that cross from C++ into JavaScript.
//
// TSS errors carry `rc` (the TSS2_RC) and leave `code` unset: the TypeScript layer maps rc -> code in
// one table (native/lib/tpm-error.ts). Misuse errors carry a `code` from a small closed set.
#pragma once

#include <napi.h>
#include <tss2/tss2_common.h>

#include <string>

namespace tpmnative {

// Misuse codes (the only `code` values the addon sets itself).
extern const char* const kCodeClosed;         // TPM_CLOSED
extern const char* const kCodeUnknownHandle;  // TPM_UNKNOWN_HANDLE
extern const char* const kCodeBadArgument;    // TPM_BAD_ARGUMENT
extern const char* const kCodeEngine;         // TPM_ENGINE

// Plain C++ description of a failure, filled on any thread, turned into a JS Error on the main thread.
struct JobError {
  bool set = false;
  bool isTss = false;     // true: rc + operation; false: code + message
  TSS2_RC rc = 0;
  std::string operation;  // ESAPI function that failed, e.g. "Esys_Sign"
  std::string code;
  std::string message;

  void Tss(const char* op, TSS2_RC r);
  void Misuse(const char* c, std::string msg);
};

// Error with `rc` and message `${operation}: ${Tss2_RC_Decode(rc)}`.
Napi::Error TssError(Napi::Env env, const std::string& operation, TSS2_RC rc);
// Error with `code` and message.
Napi::Error MisuseError(Napi::Env env, const char* code, const std::string& message);
Napi::Error ToJsError(Napi::Env env, const JobError& e);

}  // namespace tpmnative
