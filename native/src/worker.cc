#include "worker.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "context.h"

namespace tpmnative {

Job::Job(Napi::Env env, const char* name) : deferred_(Napi::Promise::Deferred::New(env)), name_(name) {}

Napi::Value Job::Result(Napi::Env env, Context&) { return env.Undefined(); }

bool Job::Check(const char* op, TSS2_RC rc) {
  if (rc == TSS2_RC_SUCCESS) return true;
  error.Tss(op, rc);
  return false;
}

bool Job::Settle(Napi::Env env, Context& ctx) {
  try {
    if (error.set) {
      deferred_.Reject(ToJsError(env, error).Value());
    } else {
      deferred_.Resolve(Result(env, ctx));
    }
    return true;
  } catch (const Napi::Error& e) {
    try {
      deferred_.Reject(e.Value());
      return true;
    } catch (...) {
    }
  } catch (...) {
  }
  return false;
}

// Runs one job on the libuv thread pool. Holds the context state alive for the duration.
class JobWorker : public Napi::AsyncWorker {
 public:
  JobWorker(Napi::Env env, JobQueue* queue, std::unique_ptr<Job> job, std::shared_ptr<ContextState> st)
      : Napi::AsyncWorker(env, job->name()), queue_(queue), job_(std::move(job)), state_(std::move(st)) {}

  void Execute() override {
    // Only ESAPI calls on plain C++ data here; never napi.
    std::lock_guard<std::timed_mutex> lock(state_->mu);
    if (state_->esys == nullptr && !job_->RunsWhenClosed()) {
      job_->error.Misuse(kCodeClosed, std::string(job_->name()) + ": TPM context is closed");
      return;
    }
    job_->Run(*state_);
  }

  void OnOK() override { Finish(); }
  void OnError(const Napi::Error&) override { Finish(); }  // SetError() is never used

 private:
  // Must not throw: runs inside node-addon-api's completion callback.
  void Finish() {
    Napi::Env env = Env();
    bool alive = job_->Settle(env, *queue_->owner_);
    job_.reset();
    queue_->Completed(env, alive);
  }

  JobQueue* queue_;
  std::unique_ptr<Job> job_;
  std::shared_ptr<ContextState> state_;
};

Napi::Promise JobQueue::Submit(Napi::Env env, std::unique_ptr<Job> job) {
  Napi::Promise promise = job->Promise();
  if (abandoned_) return promise;  // env shutting down: never settles
  if (!job->error.set && !job->RunsWhenClosed() && !owner_->IsOpen()) {
    job->error.Misuse(kCodeClosed, std::string(job->name()) + ": TPM context is closed");
  }
  if (job->error.set) {
    job->Settle(env, *owner_);
    return promise;
  }
  pending_.push_back(std::move(job));
  if (!holding_) {
    // Keep the JS object (and so this queue) alive while work is pending. Idle contexts hold nothing:
    // no libuv handle or request exists unless a job is on the thread pool.
    holding_ = true;
    owner_->Ref();
  }
  DispatchNext(env);
  return promise;
}

void JobQueue::DispatchNext(Napi::Env env) {
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(busyMu_);
      if (busy_) return;  // the running job dispatches the next one when it completes
    }
    if (pending_.empty()) {
      if (holding_) {
        holding_ = false;
        owner_->Unref();  // may make the object collectable: touch nothing after this
      }
      return;
    }
    std::unique_ptr<Job> job = std::move(pending_.front());
    pending_.pop_front();

    // Checks against the context's state as of now (after every earlier job finished).
    if (!job->RunsWhenClosed() && !owner_->IsOpen()) {
      job->error.Misuse(kCodeClosed, std::string(job->name()) + ": TPM context is closed");
    } else {
      for (ESYS_TR h : job->handles) {
        if (!owner_->IsTracked(h)) {
          job->error.Misuse(kCodeUnknownHandle, std::string(job->name()) + ": unknown handle " +
                                                    std::to_string(h) + " (never handed out by this context, or flushed)");
          break;
        }
      }
    }
    if (job->error.set) {
      job->Settle(env, *owner_);
      continue;
    }
    job->Dispatching(*owner_);
    {
      std::lock_guard<std::mutex> lock(busyMu_);
      if (busy_) {  // invariant: one job on the thread pool per context
        std::fprintf(stderr, "tpm_native: internal error: job dispatched while busy\n");
        std::abort();
      }
      busy_ = true;
    }
    JobWorker* worker = nullptr;
    try {
      worker = new JobWorker(env, this, std::move(job), owner_->state());
      worker->Queue();  // deletes itself after OnOK
    } catch (...) {
      // napi refused to create/queue async work: the env is shutting down.
      delete worker;
      {
        std::lock_guard<std::mutex> lock(busyMu_);
        busy_ = false;
      }
      Abandon();
    }
    return;
  }
}

void JobQueue::Abandon() {
  abandoned_ = true;
  pending_.clear();  // their promises stay pending: no JS can observe them any more
  if (holding_) {
    holding_ = false;
    try {
      owner_->Unref();
    } catch (...) {
    }
  }
}

void JobQueue::Completed(Napi::Env env, bool envAlive) {
  {
    std::lock_guard<std::mutex> lock(busyMu_);
    if (!busy_) {
      std::fprintf(stderr, "tpm_native: internal error: completion while not busy\n");
      std::abort();
    }
    busy_ = false;
  }
  if (!envAlive || abandoned_) {
    Abandon();
    return;
  }
  try {
    DispatchNext(env);
  } catch (...) {
    Abandon();
  }
}

}  // namespace tpmnative
