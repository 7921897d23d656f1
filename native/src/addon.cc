// Module init: binding.open(tcti), binding.engineId, binding.rcDecode(rc), binding.sdNotify(state).
#include <napi.h>
#include <tss2/tss2_rc.h>

#include <cstdlib>
#include <memory>
#include <mutex>

#include "context.h"
#include "engine.h"
#include "errors.h"
#include "sd-notify.h"

namespace tpmnative {
namespace {

Napi::Value RcDecode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber())
    throw MisuseError(env, kCodeBadArgument, "rcDecode: argument 1 must be a number");
  const uint32_t rc = info[0].As<Napi::Number>().Uint32Value();
  const char* s = Tss2_RC_Decode(rc);
  return Napi::String::New(env, s ? s : "");
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // Once per process (worker threads may load the addon too).
  static std::once_flag once;
  std::call_once(once, [] {
    // tpm2-tss logs every failed command to stderr (e.g. probing an absent NV index or persistent
    // handle, which resolves null here); failures reach JS as rejections instead. An explicit TSS2_LOG
    // setting (e.g. TSS2_LOG=esys+debug) is respected.
    setenv("TSS2_LOG", "all+none", 0);
    engine::EnsureRegistered();
  });

  auto* data = new AddonData();
  data->contextCtor = Napi::Persistent(Context::Define(env));
  env.SetInstanceData<AddonData>(data);  // deleted by Node when the env goes away
  // Runs before the instance data is deleted: finalize contexts still open at env teardown, so a
  // process (or worker) exiting with an open context neither hangs nor leaves ESAPI mid-call.
  std::shared_ptr<OpenContexts> contexts = data->contexts;
  env.AddCleanupHook([contexts]() { FinalizeAll(*contexts); });

  exports.Set("open", Napi::Function::New<Open>(env, "open"));
  exports.Set("rcDecode", Napi::Function::New<RcDecode>(env, "rcDecode"));
  exports.Set("sdNotify", Napi::Function::New<SdNotify>(env, "sdNotify"));
  exports.DefineProperty(Napi::PropertyDescriptor::Value("engineId", Napi::String::New(env, engine::EngineId()),
                                                         napi_enumerable));
  return exports;
}

}  // namespace
}  // namespace tpmnative

static Napi::Object InitTpmNative(Napi::Env env, Napi::Object exports) { return tpmnative::Init(env, exports); }

NODE_API_MODULE(tpm_native, InitTpmNative)
