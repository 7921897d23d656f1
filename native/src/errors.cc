#include "errors.h"

#include <tss2/tss2_rc.h>

#include <utility>

namespace tpmnative {

const char* const kCodeClosed = "TPM_CLOSED";
const char* const kCodeUnknownHandle = "TPM_UNKNOWN_HANDLE";
const char* const kCodeBadArgument = "TPM_BAD_ARGUMENT";
const char* const kCodeEngine = "TPM_ENGINE";

void JobError::Tss(const char* op, TSS2_RC r) {
  set = true;
  isTss = true;
  rc = r;
  operation = op;
}

void JobError::Misuse(const char* c, std::string msg) {
  set = true;
  isTss = false;
  code = c;
  message = std::move(msg);
}

Napi::Error TssError(Napi::Env env, const std::string& operation, TSS2_RC rc) {
  // Tss2_RC_Decode uses a per-thread static buffer: only ever called on the JS thread here.
  const char* decoded = Tss2_RC_Decode(rc);
  Napi::Error err = Napi::Error::New(env, operation + ": " + (decoded ? decoded : "unknown error"));
  err.Value().Set("rc", Napi::Number::New(env, static_cast<double>(rc)));
  return err;
}

Napi::Error MisuseError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Value().Set("code", Napi::String::New(env, code));
  return err;
}

Napi::Error ToJsError(Napi::Env env, const JobError& e) {
  if (e.isTss) return TssError(env, e.operation, e.rc);
  return MisuseError(env, e.code.c_str(), e.message);
}

}  // namespace tpmnative
