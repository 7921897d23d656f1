// One ESAPI context (RawContext in native/lib/binding.ts).
//
// ContextState owns the ESAPI and TCTI contexts and the mutex that is held during every ESAPI call
// (thread-pool jobs and the TLS engine's sign callback). It is shared with the TLS key registry, so it
// can outlive the JS object. Context is the JS wrapper: FIFO job queue and the set of ESYS_TR values
// this context handed out (JS thread only).
#pragma once

#include <napi.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_tcti.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "worker.h"

namespace tpmnative {

struct ContextState {
  std::timed_mutex mu;              // held while any ESAPI call on `esys` runs
  ESYS_CONTEXT* esys = nullptr;     // guarded by mu; null once closed
  TSS2_TCTI_CONTEXT* tcti = nullptr;
  std::atomic<bool> open{false};    // readable without the mutex
  uint32_t nvBufferMax = 0;         // cached TPM2_PT_NV_BUFFER_MAX (guarded by mu)
  // The EK policy session, kept across activateCredential calls (guarded by mu): used with
  // continueSession, the TPM resets its policy digest after each successful use, so each activation
  // costs PolicySecret (+ PolicyOR) + ActivateCredential instead of also starting and flushing a session.
  ESYS_TR ekSession = ESYS_TR_NONE;
  uint16_t ekSessionHash = 0;
  void DropEkSessionLocked();

  ContextState() = default;
  ContextState(const ContextState&) = delete;
  ContextState& operator=(const ContextState&) = delete;
  ~ContextState();

  // Esys_Finalize + Tss2_TctiLdr_Finalize and drops TLS keys of this context. Caller holds mu.
  void FinalizeLocked();
};

// Contexts opened in one env, finalized by that env's cleanup hook.
struct OpenContexts {
  std::mutex mu;
  std::vector<std::weak_ptr<ContextState>> states;
};

// Per-env addon data.
struct AddonData {
  Napi::FunctionReference contextCtor;
  std::shared_ptr<OpenContexts> contexts = std::make_shared<OpenContexts>();  // shared with the cleanup hook
};

class Context : public Napi::ObjectWrap<Context> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object NewInstance(Napi::Env env, std::shared_ptr<ContextState> st);

  explicit Context(const Napi::CallbackInfo& info);

  bool IsOpen() const { return state_ && state_->open.load(); }
  // Handles are reference-counted: Esys_TR_FromTPMPublic returns the existing ESYS_TR when this context
  // already has one for that persistent handle, so fromPersistent() twice yields the same value twice.
  bool IsTracked(ESYS_TR h) const { return tracked_.count(h) != 0; }
  uint32_t RefCount(ESYS_TR h) const {
    auto it = tracked_.find(h);
    return it == tracked_.end() ? 0 : it->second;
  }
  void Track(ESYS_TR h) { ++tracked_[h]; }
  void Untrack(ESYS_TR h) {
    auto it = tracked_.find(h);
    if (it != tracked_.end() && --it->second == 0) tracked_.erase(it);
  }
  void Forget(ESYS_TR h) { tracked_.erase(h); }
  void UntrackAll() { tracked_.clear(); }
  const std::shared_ptr<ContextState>& state() const { return state_; }

 private:
  Napi::Value GetClosed(const Napi::CallbackInfo& info);
  Napi::Value GetRandom(const Napi::CallbackInfo& info);
  Napi::Value GetCapability(const Napi::CallbackInfo& info);
  Napi::Value PcrRead(const Napi::CallbackInfo& info);
  Napi::Value NvRead(const Napi::CallbackInfo& info);
  Napi::Value NvDefineSpace(const Napi::CallbackInfo& info);  // TPM factories only
  Napi::Value NvWrite(const Napi::CallbackInfo& info);        // TPM factories only
  Napi::Value CreatePrimary(const Napi::CallbackInfo& info);
  Napi::Value Create(const Napi::CallbackInfo& info);
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value ReadPublic(const Napi::CallbackInfo& info);
  Napi::Value FromPersistent(const Napi::CallbackInfo& info);
  Napi::Value FlushForeign(const Napi::CallbackInfo& info);
  Napi::Value EvictControl(const Napi::CallbackInfo& info);
  Napi::Value Flush(const Napi::CallbackInfo& info);
  Napi::Value Sign(const Napi::CallbackInfo& info);
  Napi::Value Certify(const Napi::CallbackInfo& info);
  Napi::Value Quote(const Napi::CallbackInfo& info);
  Napi::Value ActivateCredential(const Napi::CallbackInfo& info);
  Napi::Value RegisterTlsKey(const Napi::CallbackInfo& info);
  Napi::Value UnregisterTlsKey(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  std::shared_ptr<ContextState> state_;
  std::unordered_map<ESYS_TR, uint32_t> tracked_;  // ESYS_TR -> references handed out
  JobQueue queue_;
};

// binding.open(tcti): Promise<RawContext>
Napi::Value Open(const Napi::CallbackInfo& info);

// Env cleanup: finalizes every still-open context of this env (waits a bounded time for in-flight work).
void FinalizeAll(OpenContexts& contexts);

// TPM2_Sign over a digest with an empty-auth key (password session), validation ticket NULL/HASHCHECK.
// Caller holds the context mutex.
TSS2_RC SignDigest(ESYS_CONTEXT* esys, ESYS_TR key, const uint8_t* digest, size_t len, TPMI_ALG_HASH hashAlg,
                   TPMI_ALG_SIG_SCHEME sigAlg, TPMT_SIGNATURE** signature);

}  // namespace tpmnative
