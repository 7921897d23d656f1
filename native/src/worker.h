// Per-context FIFO of TPM jobs and the thread-pool worker that runs one of them at a time.
//
// A Job is a plain C++ baton: the JS method converts (and validates) its arguments into the job on the
// JS thread, Run() performs ESAPI calls on the thread pool with the context mutex held, and Result()
// turns the plain C++ outputs into JS values back on the JS thread. Only one job per context is handed
// to the thread pool at a time; the next one is dispatched when the previous one completes.
#pragma once

#include <napi.h>
#include <tss2/tss2_esys.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "errors.h"

namespace tpmnative {

class Context;
struct ContextState;

// Frees ESAPI-allocated outputs.
struct EsysFree {
  void operator()(void* p) const { Esys_Free(p); }
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFree>;

using Bytes = std::vector<uint8_t>;

class Job {
 public:
  Job(Napi::Env env, const char* name);
  virtual ~Job() = default;
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  const char* name() const { return name_; }
  Napi::Promise Promise() const { return deferred_.Promise(); }

  // JS thread, right before the job goes to the thread pool (after the closed/handle checks passed).
  virtual void Dispatching(Context& ctx) {}
  // Pool thread. The context mutex is held and the ESAPI context is open (unless RunsWhenClosed()).
  virtual void Run(ContextState& st) = 0;
  // JS thread, only after Run() succeeded: the resolution value. May update the context (tracking).
  virtual Napi::Value Result(Napi::Env env, Context& ctx);
  // close() runs even when the context is already closed (idempotent).
  virtual bool RunsWhenClosed() const { return false; }

  // JS thread: resolve with Result() or reject with `error`. Never throws; returns false when the
  // promise could not be settled (the env is shutting down: JS can no longer run).
  bool Settle(Napi::Env env, Context& ctx);

  // Records a TSS failure; returns false when rc is an error (use: `if (!Check("Esys_X", rc)) return;`).
  bool Check(const char* op, TSS2_RC rc);

  // ESYS_TR values this job uses; each must be tracked by the context when the job is dispatched.
  std::vector<ESYS_TR> handles;
  JobError error;

 private:
  Napi::Promise::Deferred deferred_;
  const char* name_;
};

class JobQueue {
 public:
  explicit JobQueue(Context* owner) : owner_(owner) {}
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  // JS thread. Rejects at once when the job already carries an (argument) error or the context is
  // closed; otherwise appends it to the FIFO. Returns the job's promise.
  Napi::Promise Submit(Napi::Env env, std::unique_ptr<Job> job);

 private:
  friend class JobWorker;
  void DispatchNext(Napi::Env env);
  void Completed(Napi::Env env, bool envAlive);
  // The env is going away: drop pending jobs without running them and stop dispatching.
  void Abandon();

  Context* owner_;
  std::deque<std::unique_ptr<Job>> pending_;
  std::mutex busyMu_;
  bool busy_ = false;     // a job is on the thread pool (guarded by busyMu_)
  bool holding_ = false;  // the owner's JS object is Ref()'d while jobs are pending (JS thread only)
  bool abandoned_ = false;
};

}  // namespace tpmnative
