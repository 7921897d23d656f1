#include "context.h"

#include <tss2/tss2_mu.h>
#include <tss2/tss2_sys.h>
#include <tss2/tss2_tctildr.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <utility>

#include "engine.h"
#include "errors.h"

namespace tpmnative {
namespace {

// ---------------------------------------------------------------------------------------------------
// Marshalling helpers (Tss2_MU_*). Inputs are unmarshalled on the JS thread when the call is made.

template <typename T>
using MarshalFn = TSS2_RC (*)(T const*, uint8_t*, size_t, size_t*);
template <typename T>
using UnmarshalFn = TSS2_RC (*)(uint8_t const*, size_t, size_t*, T*);

template <typename T>
TSS2_RC Marshal(MarshalFn<T> fn, const T& value, Bytes* out) {
  out->resize(sizeof(T) + 64);  // marshalled TPM structures are never larger than their C struct
  size_t offset = 0;
  TSS2_RC rc = fn(&value, out->data(), out->size(), &offset);
  out->resize(rc == TSS2_RC_SUCCESS ? offset : 0);
  return rc;
}

// The whole buffer must be exactly one T.
template <typename T>
bool UnmarshalExact(UnmarshalFn<T> fn, const Bytes& in, T* out) {
  std::memset(out, 0, sizeof(T));
  size_t offset = 0;
  return fn(in.data(), in.size(), &offset, out) == TSS2_RC_SUCCESS && offset == in.size();
}

// TPM2_RC_HANDLE for any handle/parameter number: "no such object / index" (format-one, TPM layer).
bool IsNoSuchHandle(TSS2_RC rc) {
  return (rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER && (rc & (TPM2_RC_FMT1 | 0x3F)) == TPM2_RC_HANDLE;
}

bool IsPersistent(TPM2_HANDLE h) { return (h >> TPM2_HR_SHIFT) == TPM2_HT_PERSISTENT; }

Napi::Buffer<uint8_t> ToBuffer(Napi::Env env, const Bytes& b) { return Napi::Buffer<uint8_t>::Copy(env, b.data(), b.size()); }

// Converts JS arguments into the job; the first problem becomes a TPM_BAD_ARGUMENT rejection.
class Args {
 public:
  Args(const Napi::CallbackInfo& info, const char* method, Job& job) : info_(info), method_(method), job_(job) {}

  bool U32(size_t i, uint32_t* out) {
    if (Failed()) return false;
    Napi::Value v = info_[i];
    if (!v.IsNumber()) return Bad(i, "must be a number");
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0 && d <= 4294967295.0) || d != static_cast<double>(static_cast<uint32_t>(d)))
      return Bad(i, "must be an integer in [0, 2^32)");
    *out = static_cast<uint32_t>(d);
    return true;
  }
  bool U16(size_t i, uint16_t* out) {
    uint32_t v = 0;
    if (!U32(i, &v)) return false;
    if (v > 0xFFFF) return Bad(i, "must be an integer in [0, 65535]");
    *out = static_cast<uint16_t>(v);
    return true;
  }
  bool Handle(size_t i, ESYS_TR* out) {
    if (!U32(i, out)) return false;
    job_.handles.push_back(*out);
    return true;
  }
  bool Data(size_t i, Bytes* out) {
    if (Failed()) return false;
    Napi::Value v = info_[i];
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      return Bad(i, "must be a Buffer");
    auto a = v.As<Napi::Uint8Array>();
    out->assign(a.Data(), a.Data() + a.ByteLength());
    return true;
  }
  template <typename T>
  bool Struct(size_t i, UnmarshalFn<T> fn, const char* type, T* out) {
    Bytes b;
    if (!Data(i, &b)) return false;
    if (!UnmarshalExact(fn, b, out)) return Bad(i, (std::string("is not a marshalled ") + type).c_str());
    return true;
  }
  // TPM2B with a fixed-size buffer: copy raw bytes (no size prefix in the JS value).
  template <typename T>
  bool Sized(size_t i, const char* type, T* out) {
    Bytes b;
    if (!Data(i, &b)) return false;
    if (b.size() > sizeof(out->buffer)) return Bad(i, (std::string("is too long for ") + type).c_str());
    std::memset(out, 0, sizeof(T));
    out->size = static_cast<uint16_t>(b.size());
    if (!b.empty()) std::memcpy(out->buffer, b.data(), b.size());
    return true;
  }
  bool Failed() const { return job_.error.set; }

 private:
  bool Bad(size_t i, const char* what) {
    job_.error.Misuse(kCodeBadArgument, std::string(method_) + ": argument " + std::to_string(i + 1) + " " + what);
    return false;
  }
  const Napi::CallbackInfo& info_;
  const char* method_;
  Job& job_;
};

// ---------------------------------------------------------------------------------------------------
// Jobs. Run() executes on the thread pool with the context mutex held.

class GetRandomJob : public Job {
 public:
  explicit GetRandomJob(Napi::Env env) : Job(env, "getRandom") {}
  uint16_t count = 0;
  Bytes out;
  void Run(ContextState& st) override {
    while (out.size() < count) {
      TPM2B_DIGEST* raw = nullptr;
      size_t want = std::min<size_t>(count - out.size(), sizeof(raw->buffer));
      TSS2_RC rc = Esys_GetRandom(st.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, static_cast<UINT16>(want), &raw);
      EsysPtr<TPM2B_DIGEST> r(raw);
      if (!Check("Esys_GetRandom", rc)) return;
      if (r->size == 0) {
        Check("Esys_GetRandom", TSS2_ESYS_RC_INSUFFICIENT_RESPONSE);
        return;
      }
      out.insert(out.end(), r->buffer, r->buffer + std::min<size_t>(r->size, want));
    }
  }
  Napi::Value Result(Napi::Env env, Context&) override { return ToBuffer(env, out); }
};

class GetCapabilityJob : public Job {
 public:
  explicit GetCapabilityJob(Napi::Env env) : Job(env, "getCapability") {}
  uint32_t capability = 0, property = 0, count = 0;
  bool moreData = false;
  Bytes data;
  void Run(ContextState& st) override {
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* raw = nullptr;
    TSS2_RC rc = Esys_GetCapability(st.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, capability, property, count,
                                    &more, &raw);
    EsysPtr<TPMS_CAPABILITY_DATA> cap(raw);
    if (!Check("Esys_GetCapability", rc)) return;
    moreData = more == TPM2_YES;
    Check("Tss2_MU_TPMS_CAPABILITY_DATA_Marshal", Marshal(Tss2_MU_TPMS_CAPABILITY_DATA_Marshal, *cap, &data));
  }
  Napi::Value Result(Napi::Env env, Context&) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("moreData", Napi::Boolean::New(env, moreData));
    o.Set("data", ToBuffer(env, data));
    return o;
  }
};

class PcrReadJob : public Job {
 public:
  explicit PcrReadJob(Napi::Env env) : Job(env, "pcrRead") {}
  TPML_PCR_SELECTION selection{};
  uint32_t updateCounter = 0;
  Bytes selOut, digests;
  void Run(ContextState& st) override {
    TPML_PCR_SELECTION* sel = nullptr;
    TPML_DIGEST* values = nullptr;
    TSS2_RC rc = Esys_PCR_Read(st.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &selection, &updateCounter, &sel,
                               &values);
    EsysPtr<TPML_PCR_SELECTION> s(sel);
    EsysPtr<TPML_DIGEST> v(values);
    if (!Check("Esys_PCR_Read", rc)) return;
    if (!Check("Tss2_MU_TPML_PCR_SELECTION_Marshal", Marshal(Tss2_MU_TPML_PCR_SELECTION_Marshal, *s, &selOut))) return;
    Check("Tss2_MU_TPML_DIGEST_Marshal", Marshal(Tss2_MU_TPML_DIGEST_Marshal, *v, &digests));
  }
  Napi::Value Result(Napi::Env env, Context&) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("updateCounter", Napi::Number::New(env, updateCounter));
    o.Set("selection", ToBuffer(env, selOut));
    o.Set("digests", ToBuffer(env, digests));
    return o;
  }
};

uint32_t NvBufferMax(ContextState& st) {
  if (st.nvBufferMax == 0) {
    uint32_t value = 512;
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* raw = nullptr;
    TSS2_RC rc = Esys_GetCapability(st.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES,
                                    TPM2_PT_NV_BUFFER_MAX, 1, &more, &raw);
    EsysPtr<TPMS_CAPABILITY_DATA> cap(raw);
    if (rc == TSS2_RC_SUCCESS && cap->data.tpmProperties.count > 0 &&
        cap->data.tpmProperties.tpmProperty[0].property == TPM2_PT_NV_BUFFER_MAX &&
        cap->data.tpmProperties.tpmProperty[0].value > 0) {
      value = cap->data.tpmProperties.tpmProperty[0].value;
    }
    st.nvBufferMax = std::min<uint32_t>(value, TPM2_MAX_NV_BUFFER_SIZE);
  }
  return st.nvBufferMax;
}

// TPM2_NV_ReadPublic: the index's attributes and size.
TSS2_RC NvPublic(ESYS_CONTEXT* esys, ESYS_TR nv, TPMS_NV_PUBLIC* out) {
  TPM2B_NV_PUBLIC* raw = nullptr;
  TSS2_RC rc = Esys_NV_ReadPublic(esys, nv, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &raw, nullptr);
  EsysPtr<TPM2B_NV_PUBLIC> pub(raw);
  if (rc == TSS2_RC_SUCCESS) *out = pub->nvPublic;
  return rc;
}

class NvReadJob : public Job {
 public:
  explicit NvReadJob(Napi::Env env) : Job(env, "nvRead") {}
  uint32_t index = 0;
  bool absent = false;
  Bytes data;
  void Run(ContextState& st) override {
    ESYS_TR nv = ESYS_TR_NONE;
    TSS2_RC rc = Esys_TR_FromTPMPublic(st.esys, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &nv);
    if (IsNoSuchHandle(rc)) {
      absent = true;
      return;
    }
    if (!Check("Esys_TR_FromTPMPublic", rc)) return;
    ReadAll(st, nv);
    Esys_TR_Close(st.esys, &nv);
  }
  Napi::Value Result(Napi::Env env, Context&) override {
    if (absent) return env.Null();
    return ToBuffer(env, data);
  }

 private:
  void ReadAll(ContextState& st, ESYS_TR nv) {
    TPMS_NV_PUBLIC pub{};
    TSS2_RC rc = NvPublic(st.esys, nv, &pub);
    if (!Check("Esys_NV_ReadPublic", rc)) return;
    const uint16_t size = pub.dataSize;
    const TPMA_NV attrs = pub.attributes;
    // Authorize with the index itself (AUTHREAD, empty auth), falling back to the owner hierarchy.
    std::vector<ESYS_TR> auths;
    if (attrs & TPMA_NV_AUTHREAD) auths.push_back(nv);
    if (attrs & TPMA_NV_OWNERREAD) auths.push_back(ESYS_TR_RH_OWNER);
    if (auths.empty()) auths.push_back(nv);  // let the TPM report why it cannot be read
    const uint32_t chunk = NvBufferMax(st);
    TSS2_RC first = TSS2_RC_SUCCESS;
    for (ESYS_TR auth : auths) {
      rc = ReadWith(st, nv, auth, size, chunk);
      if (rc == TSS2_RC_SUCCESS) return;
      if (first == TSS2_RC_SUCCESS) first = rc;
    }
    Check("Esys_NV_Read", first);
  }

  TSS2_RC ReadWith(ContextState& st, ESYS_TR nv, ESYS_TR auth, uint16_t size, uint32_t chunk) {
    data.clear();
    data.reserve(size);
    uint16_t offset = 0;
    while (offset < size) {
      uint16_t n = static_cast<uint16_t>(std::min<uint32_t>(chunk, size - offset));
      TPM2B_MAX_NV_BUFFER* raw = nullptr;
      TSS2_RC rc = Esys_NV_Read(st.esys, auth, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, n, offset, &raw);
      EsysPtr<TPM2B_MAX_NV_BUFFER> b(raw);
      if (rc != TSS2_RC_SUCCESS) return rc;
      if (b->size == 0) return TSS2_ESYS_RC_INSUFFICIENT_RESPONSE;
      uint16_t got = std::min<uint16_t>(b->size, n);
      data.insert(data.end(), b->buffer, b->buffer + got);
      offset = static_cast<uint16_t>(offset + got);
    }
    return TSS2_RC_SUCCESS;
  }
};

// NV provisioning (TPM factories only): an index with empty auth and no policy, then its whole contents.
class NvDefineSpaceJob : public Job {
 public:
  explicit NvDefineSpaceJob(Napi::Env env) : Job(env, "nvDefineSpace") {}
  ESYS_TR hierarchy = ESYS_TR_NONE;
  uint32_t index = 0, attributes = 0;
  uint16_t size = 0;
  void Run(ContextState& st) override {
    TPM2B_AUTH auth{};
    TPM2B_NV_PUBLIC pub{};
    pub.nvPublic.nvIndex = index;
    pub.nvPublic.nameAlg = TPM2_ALG_SHA256;
    pub.nvPublic.attributes = attributes;
    pub.nvPublic.dataSize = size;
    ESYS_TR nv = ESYS_TR_NONE;
    TSS2_RC rc = Esys_NV_DefineSpace(st.esys, hierarchy, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &auth, &pub, &nv);
    if (!Check("Esys_NV_DefineSpace", rc)) return;
    Esys_TR_Close(st.esys, &nv);
  }
};

class NvWriteJob : public Job {
 public:
  explicit NvWriteJob(Napi::Env env) : Job(env, "nvWrite") {}
  uint32_t index = 0;
  Bytes data;
  bool lock = false;
  void Run(ContextState& st) override {
    ESYS_TR nv = ESYS_TR_NONE;
    if (!Check("Esys_TR_FromTPMPublic", Esys_TR_FromTPMPublic(st.esys, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &nv)))
      return;
    WriteAll(st, nv);
    Esys_TR_Close(st.esys, &nv);
  }

 private:
  void WriteAll(ContextState& st, ESYS_TR nv) {
    TPMS_NV_PUBLIC pub{};
    TSS2_RC rc = NvPublic(st.esys, nv, &pub);
    if (!Check("Esys_NV_ReadPublic", rc)) return;
    const TPMA_NV attrs = pub.attributes;
    // The first write role the index allows; each has an empty authorization value here.
    ESYS_TR auth = (attrs & TPMA_NV_PPWRITE) ? ESYS_TR_RH_PLATFORM : (attrs & TPMA_NV_OWNERWRITE) ? ESYS_TR_RH_OWNER : nv;
    const uint32_t chunk = NvBufferMax(st);
    size_t offset = 0;
    while (offset < data.size()) {
      TPM2B_MAX_NV_BUFFER buf{};
      buf.size = static_cast<uint16_t>(std::min<size_t>(chunk, data.size() - offset));
      std::memcpy(buf.buffer, data.data() + offset, buf.size);
      rc = Esys_NV_Write(st.esys, auth, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &buf,
                         static_cast<uint16_t>(offset));
      if (!Check("Esys_NV_Write", rc)) return;
      offset += buf.size;
    }
    if (lock) Check("Esys_NV_WriteLock", Esys_NV_WriteLock(st.esys, auth, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE));
  }
};

bool HierarchyTr(uint32_t hierarchy, ESYS_TR* out) {
  switch (hierarchy) {
    case TPM2_RH_OWNER: *out = ESYS_TR_RH_OWNER; return true;
    case TPM2_RH_ENDORSEMENT: *out = ESYS_TR_RH_ENDORSEMENT; return true;
    case TPM2_RH_NULL: *out = ESYS_TR_RH_NULL; return true;
    case TPM2_RH_PLATFORM: *out = ESYS_TR_RH_PLATFORM; return true;
    default: return false;
  }
}

// Name of a loaded object (no size prefix).
TSS2_RC NameOf(ESYS_CONTEXT* esys, ESYS_TR h, Bytes* out) {
  TPM2B_NAME* raw = nullptr;
  TSS2_RC rc = Esys_TR_GetName(esys, h, &raw);
  EsysPtr<TPM2B_NAME> name(raw);
  if (rc == TSS2_RC_SUCCESS) out->assign(name->name, name->name + name->size);
  return rc;
}

class CreatePrimaryJob : public Job {
 public:
  explicit CreatePrimaryJob(Napi::Env env) : Job(env, "createPrimary") {}
  ESYS_TR hierarchy = ESYS_TR_NONE;
  TPM2B_PUBLIC inPublic{};
  ESYS_TR handle = ESYS_TR_NONE;
  Bytes outPublic, name;
  void Run(ContextState& st) override {
    TPM2B_SENSITIVE_CREATE sensitive{};
    TPM2B_DATA outsideInfo{};
    TPML_PCR_SELECTION creationPcr{};
    TPM2B_PUBLIC* rawPub = nullptr;
    TSS2_RC rc = Esys_CreatePrimary(st.esys, hierarchy, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                                    &inPublic, &outsideInfo, &creationPcr, &handle, &rawPub, nullptr, nullptr, nullptr);
    EsysPtr<TPM2B_PUBLIC> pub(rawPub);
    if (!Check("Esys_CreatePrimary", rc)) return;
    rc = Marshal(Tss2_MU_TPM2B_PUBLIC_Marshal, *pub, &outPublic);
    if (rc == TSS2_RC_SUCCESS) rc = NameOf(st.esys, handle, &name);
    if (rc != TSS2_RC_SUCCESS) {
      Esys_FlushContext(st.esys, handle);  // do not leak the object in the TPM
      Check("Esys_CreatePrimary", rc);
    }
  }
  Napi::Value Result(Napi::Env env, Context& ctx) override {
    ctx.Track(handle);
    Napi::Object o = Napi::Object::New(env);
    o.Set("handle", Napi::Number::New(env, handle));
    o.Set("public", ToBuffer(env, outPublic));
    o.Set("name", ToBuffer(env, name));
    return o;
  }
};

class CreateJob : public Job {
 public:
  explicit CreateJob(Napi::Env env) : Job(env, "create") {}
  ESYS_TR parent = ESYS_TR_NONE;
  TPM2B_PUBLIC inPublic{};
  Bytes outPrivate, outPublic;
  void Run(ContextState& st) override {
    TPM2B_SENSITIVE_CREATE sensitive{};
    TPM2B_DATA outsideInfo{};
    TPML_PCR_SELECTION creationPcr{};
    TPM2B_PRIVATE* rawPriv = nullptr;
    TPM2B_PUBLIC* rawPub = nullptr;
    TSS2_RC rc = Esys_Create(st.esys, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive, &inPublic,
                             &outsideInfo, &creationPcr, &rawPriv, &rawPub, nullptr, nullptr, nullptr);
    EsysPtr<TPM2B_PRIVATE> priv(rawPriv);
    EsysPtr<TPM2B_PUBLIC> pub(rawPub);
    if (!Check("Esys_Create", rc)) return;
    if (!Check("Tss2_MU_TPM2B_PRIVATE_Marshal", Marshal(Tss2_MU_TPM2B_PRIVATE_Marshal, *priv, &outPrivate))) return;
    Check("Tss2_MU_TPM2B_PUBLIC_Marshal", Marshal(Tss2_MU_TPM2B_PUBLIC_Marshal, *pub, &outPublic));
  }
  Napi::Value Result(Napi::Env env, Context&) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("private", ToBuffer(env, outPrivate));
    o.Set("public", ToBuffer(env, outPublic));
    return o;
  }
};

class LoadJob : public Job {
 public:
  explicit LoadJob(Napi::Env env) : Job(env, "load") {}
  ESYS_TR parent = ESYS_TR_NONE;
  TPM2B_PRIVATE inPrivate{};
  TPM2B_PUBLIC inPublic{};
  ESYS_TR handle = ESYS_TR_NONE;
  Bytes name;
  void Run(ContextState& st) override {
    TSS2_RC rc = Esys_Load(st.esys, parent, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &inPrivate, &inPublic, &handle);
    if (!Check("Esys_Load", rc)) return;
    rc = NameOf(st.esys, handle, &name);
    if (rc != TSS2_RC_SUCCESS) {
      Esys_FlushContext(st.esys, handle);
      Check("Esys_TR_GetName", rc);
    }
  }
  Napi::Value Result(Napi::Env env, Context& ctx) override {
    ctx.Track(handle);
    Napi::Object o = Napi::Object::New(env);
    o.Set("handle", Napi::Number::New(env, handle));
    o.Set("name", ToBuffer(env, name));
    return o;
  }
};

class ReadPublicJob : public Job {
 public:
  explicit ReadPublicJob(Napi::Env env) : Job(env, "readPublic") {}
  ESYS_TR handle = ESYS_TR_NONE;
  Bytes outPublic, name;
  void Run(ContextState& st) override {
    TPM2B_PUBLIC* rawPub = nullptr;
    TPM2B_NAME* rawName = nullptr;
    TSS2_RC rc = Esys_ReadPublic(st.esys, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &rawPub, &rawName, nullptr);
    EsysPtr<TPM2B_PUBLIC> pub(rawPub);
    EsysPtr<TPM2B_NAME> nm(rawName);
    if (!Check("Esys_ReadPublic", rc)) return;
    if (!Check("Tss2_MU_TPM2B_PUBLIC_Marshal", Marshal(Tss2_MU_TPM2B_PUBLIC_Marshal, *pub, &outPublic))) return;
    name.assign(nm->name, nm->name + nm->size);
  }
  Napi::Value Result(Napi::Env env, Context&) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("public", ToBuffer(env, outPublic));
    o.Set("name", ToBuffer(env, name));
    return o;
  }
};

class FromPersistentJob : public Job {
 public:
  explicit FromPersistentJob(Napi::Env env) : Job(env, "fromPersistent") {}
  uint32_t tpmHandle = 0;
  ESYS_TR handle = ESYS_TR_NONE;
  bool absent = false;
  void Run(ContextState& st) override {
    TSS2_RC rc = Esys_TR_FromTPMPublic(st.esys, tpmHandle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &handle);
    if (IsNoSuchHandle(rc)) {
      absent = true;
      return;
    }
    Check("Esys_TR_FromTPMPublic", rc);
  }
  Napi::Value Result(Napi::Env env, Context& ctx) override {
    if (absent) return env.Null();
    ctx.Track(handle);
    return Napi::Number::New(env, handle);
  }
};

class EvictControlJob : public Job {
 public:
  explicit EvictControlJob(Napi::Env env) : Job(env, "evictControl") {}
  ESYS_TR object = ESYS_TR_NONE;
  uint32_t persistentHandle = 0;
  ESYS_TR newHandle = ESYS_TR_NONE;
  bool removed = false;
  void Run(ContextState& st) override {
    TPM2_HANDLE tpmHandle = 0;
    if (!Check("Esys_TR_GetTpmHandle", Esys_TR_GetTpmHandle(st.esys, object, &tpmHandle))) return;
    ESYS_TR out = ESYS_TR_NONE;
    if (IsPersistent(tpmHandle)) {
      TSS2_RC rc = Esys_EvictControl(st.esys, ESYS_TR_RH_OWNER, object, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                     tpmHandle, &out);
      if (!Check("Esys_EvictControl", rc)) return;
      removed = true;
      if (out != ESYS_TR_NONE) Esys_TR_Close(st.esys, &out);
      ESYS_TR old = object;
      Esys_TR_Close(st.esys, &old);  // may already be gone; the object no longer exists either way
      engine::InvalidateHandle(&st, object);
    } else {
      TSS2_RC rc = Esys_EvictControl(st.esys, ESYS_TR_RH_OWNER, object, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                     persistentHandle, &out);
      if (!Check("Esys_EvictControl", rc)) return;
      newHandle = out;
    }
  }
  Napi::Value Result(Napi::Env env, Context& ctx) override {
    if (removed) {
      ctx.Forget(object);  // every reference: the object is gone
      return env.Null();
    }
    ctx.Track(newHandle);
    return Napi::Number::New(env, newHandle);
  }
};

class FlushJob : public Job {
 public:
  explicit FlushJob(Napi::Env env) : Job(env, "flush") {}
  ESYS_TR handle = ESYS_TR_NONE;
  bool lastRef = true;
  // A persistent TR handed out more than once: only drop one reference.
  void Dispatching(Context& ctx) override { lastRef = ctx.RefCount(handle) <= 1; }
  void Run(ContextState& st) override {
    if (!lastRef) return;
    TPM2_HANDLE tpmHandle = 0;
    if (!Check("Esys_TR_GetTpmHandle", Esys_TR_GetTpmHandle(st.esys, handle, &tpmHandle))) return;
    ESYS_TR h = handle;
    if (IsPersistent(tpmHandle)) {
      if (!Check("Esys_TR_Close", Esys_TR_Close(st.esys, &h))) return;
    } else {
      if (!Check("Esys_FlushContext", Esys_FlushContext(st.esys, h))) return;
    }
    engine::InvalidateHandle(&st, handle);
  }
  Napi::Value Result(Napi::Env env, Context& ctx) override {
    ctx.Untrack(handle);
    return env.Undefined();
  }
};

Bytes SignatureBytes(const TPMT_SIGNATURE& sig, TSS2_RC* rc) {
  Bytes out;
  *rc = Marshal(Tss2_MU_TPMT_SIGNATURE_Marshal, sig, &out);
  return out;
}

class SignJob : public Job {
 public:
  explicit SignJob(Napi::Env env) : Job(env, "sign") {}
  ESYS_TR key = ESYS_TR_NONE;
  Bytes digest;
  uint16_t hashAlg = 0, sigAlg = 0;
  Bytes signature;
  void Run(ContextState& st) override {
    TPMT_SIGNATURE* raw = nullptr;
    TSS2_RC rc = SignDigest(st.esys, key, digest.data(), digest.size(), hashAlg, sigAlg, &raw);
    EsysPtr<TPMT_SIGNATURE> sig(raw);
    if (!Check("Esys_Sign", rc)) return;
    signature = SignatureBytes(*sig, &rc);
    Check("Tss2_MU_TPMT_SIGNATURE_Marshal", rc);
  }
  Napi::Value Result(Napi::Env env, Context&) override { return ToBuffer(env, signature); }
};

Napi::Value AttestResult(Napi::Env env, const Bytes& attest, const Bytes& signature) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("attest", ToBuffer(env, attest));
  o.Set("signature", ToBuffer(env, signature));
  return o;
}

class CertifyJob : public Job {
 public:
  explicit CertifyJob(Napi::Env env) : Job(env, "certify") {}
  ESYS_TR object = ESYS_TR_NONE, signer = ESYS_TR_NONE;
  TPM2B_DATA qualifyingData{};
  Bytes attest, signature;
  void Run(ContextState& st) override {
    TPMT_SIG_SCHEME scheme{};
    scheme.scheme = TPM2_ALG_NULL;  // the signer's own scheme
    TPM2B_ATTEST* rawAttest = nullptr;
    TPMT_SIGNATURE* rawSig = nullptr;
    TSS2_RC rc = Esys_Certify(st.esys, object, signer, ESYS_TR_PASSWORD, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                              &qualifyingData, &scheme, &rawAttest, &rawSig);
    EsysPtr<TPM2B_ATTEST> a(rawAttest);
    EsysPtr<TPMT_SIGNATURE> s(rawSig);
    if (!Check("Esys_Certify", rc)) return;
    attest.assign(a->attestationData, a->attestationData + a->size);
    signature = SignatureBytes(*s, &rc);
    Check("Tss2_MU_TPMT_SIGNATURE_Marshal", rc);
  }
  Napi::Value Result(Napi::Env env, Context&) override { return AttestResult(env, attest, signature); }
};

class QuoteJob : public Job {
 public:
  explicit QuoteJob(Napi::Env env) : Job(env, "quote") {}
  ESYS_TR signer = ESYS_TR_NONE;
  TPM2B_DATA qualifyingData{};
  TPML_PCR_SELECTION selection{};
  Bytes attest, signature;
  void Run(ContextState& st) override {
    TPMT_SIG_SCHEME scheme{};
    scheme.scheme = TPM2_ALG_NULL;
    TPM2B_ATTEST* rawAttest = nullptr;
    TPMT_SIGNATURE* rawSig = nullptr;
    TSS2_RC rc = Esys_Quote(st.esys, signer, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &qualifyingData, &scheme,
                            &selection, &rawAttest, &rawSig);
    EsysPtr<TPM2B_ATTEST> a(rawAttest);
    EsysPtr<TPMT_SIGNATURE> s(rawSig);
    if (!Check("Esys_Quote", rc)) return;
    attest.assign(a->attestationData, a->attestationData + a->size);
    signature = SignatureBytes(*s, &rc);
    Check("Tss2_MU_TPMT_SIGNATURE_Marshal", rc);
  }
  Napi::Value Result(Napi::Env env, Context&) override { return AttestResult(env, attest, signature); }
};

class ActivateCredentialJob : public Job {
 public:
  explicit ActivateCredentialJob(Napi::Env env) : Job(env, "activateCredential") {}
  ESYS_TR activate = ESYS_TR_NONE, key = ESYS_TR_NONE;
  TPM2B_ID_OBJECT credentialBlob{};
  TPM2B_ENCRYPTED_SECRET secret{};
  // The EK's policy hash (its nameAlg) and, for TCG high-range EKs whose authPolicy is PolicyB =
  // PolicyOR(PolicyA, PolicyC), the two branch digests; empty for low-range EKs (PolicyA alone).
  uint16_t sessionHash = TPM2_ALG_SHA256;
  TPML_DIGEST policyOr{};
  Bytes certInfo;
  void Run(ContextState& st) override {
    if (st.ekSession != ESYS_TR_NONE && st.ekSessionHash != sessionHash) st.DropEkSessionLocked();
    if (st.ekSession == ESYS_TR_NONE) {
      TPMT_SYM_DEF symmetric{};
      symmetric.algorithm = TPM2_ALG_NULL;
      TSS2_RC rc = Esys_StartAuthSession(st.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                         nullptr, TPM2_SE_POLICY, &symmetric, sessionHash, &st.ekSession);
      if (!Check("Esys_StartAuthSession", rc)) {
        st.ekSession = ESYS_TR_NONE;
        return;
      }
      st.ekSessionHash = sessionHash;
      Esys_TRSess_SetAttributes(st.esys, st.ekSession, TPMA_SESSION_CONTINUESESSION, TPMA_SESSION_CONTINUESESSION);
    }
    // EK policy (TCG default): PolicySecret(TPM_RH_ENDORSEMENT) with the (empty) endorsement auth.
    TSS2_RC rc = Esys_PolicySecret(st.esys, ESYS_TR_RH_ENDORSEMENT, st.ekSession, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                   ESYS_TR_NONE, nullptr, nullptr, nullptr, 0, nullptr, nullptr);
    bool ok = Check("Esys_PolicySecret", rc);
    if (ok && policyOr.count > 0) {
      rc = Esys_PolicyOR(st.esys, st.ekSession, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &policyOr);
      ok = Check("Esys_PolicyOR", rc);
    }
    if (ok) {
      TPM2B_DIGEST* raw = nullptr;
      rc = Esys_ActivateCredential(st.esys, activate, key, ESYS_TR_PASSWORD, st.ekSession, ESYS_TR_NONE, &credentialBlob,
                                   &secret, &raw);
      EsysPtr<TPM2B_DIGEST> info(raw);
      ok = Check("Esys_ActivateCredential", rc);
      if (ok) certInfo.assign(info->buffer, info->buffer + info->size);
    }
    // After any failure the session's policy state is unknown: start afresh next time (and never leave
    // it loaded: without a resource manager it would leak in the TPM).
    if (!ok) st.DropEkSessionLocked();
  }
  Napi::Value Result(Napi::Env env, Context&) override { return ToBuffer(env, certInfo); }
};

// Flushes transient objects and loaded sessions this context does not own. Without a resource manager
// (swtpm) a process that died leaves its objects in the TPM's few slots; the next owner reclaims them.
// Behind a resource manager (/dev/tpmrm0, tabrmd) only this connection's own handles are visible, so
// nothing foreign is touched. Flushing by TPM handle goes through SAPI: no ESYS_TR exists for them.
class FlushForeignJob : public Job {
 public:
  explicit FlushForeignJob(Napi::Env env) : Job(env, "flushForeign") {}
  std::vector<ESYS_TR> owned;
  uint32_t flushed = 0;
  void Run(ContextState& st) override {
    std::vector<TPM2_HANDLE> mine;
    for (ESYS_TR tr : owned) {
      TPM2_HANDLE h = 0;
      if (Esys_TR_GetTpmHandle(st.esys, tr, &h) == TSS2_RC_SUCCESS) mine.push_back(h);
    }
    if (st.ekSession != ESYS_TR_NONE) {
      TPM2_HANDLE h = 0;
      if (Esys_TR_GetTpmHandle(st.esys, st.ekSession, &h) == TSS2_RC_SUCCESS) mine.push_back(h);
    }
    TSS2_SYS_CONTEXT* sys = nullptr;
    if (!Check("Esys_GetSysContext", Esys_GetSysContext(st.esys, &sys))) return;
    for (TPM2_HANDLE first : {static_cast<TPM2_HANDLE>(TPM2_TRANSIENT_FIRST), static_cast<TPM2_HANDLE>(TPM2_LOADED_SESSION_FIRST)}) {
      TPMS_CAPABILITY_DATA* raw = nullptr;
      TPMI_YES_NO more = TPM2_NO;
      TSS2_RC rc = Esys_GetCapability(st.esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES, first,
                                      TPM2_MAX_CAP_HANDLES, &more, &raw);
      EsysPtr<TPMS_CAPABILITY_DATA> cap(raw);
      if (!Check("Esys_GetCapability", rc)) return;
      for (UINT32 i = 0; i < cap->data.handles.count; i++) {
        TPM2_HANDLE h = cap->data.handles.handle[i];
        // Loaded sessions are listed under TPM_HT_LOADED_SESSION but carry their own type: 0x02 (HMAC)
        // or 0x03 (policy).
        const uint32_t type = h >> 24;
        const bool wanted = first == TPM2_TRANSIENT_FIRST ? type == 0x80 : (type == 0x02 || type == 0x03);
        if (!wanted) continue;
        if (std::find(mine.begin(), mine.end(), h) != mine.end()) continue;
        if (Tss2_Sys_FlushContext(sys, h) == TSS2_RC_SUCCESS) flushed++;
      }
    }
  }
  Napi::Value Result(Napi::Env env, Context&) override { return Napi::Number::New(env, flushed); }
};

class CloseJob : public Job {
 public:
  explicit CloseJob(Napi::Env env) : Job(env, "close") {}
  bool RunsWhenClosed() const override { return true; }
  void Run(ContextState& st) override { st.FinalizeLocked(); }
  Napi::Value Result(Napi::Env env, Context& ctx) override {
    ctx.UntrackAll();
    return env.Undefined();
  }
};

// The process's open file descriptors above stderr (from /proc/self/fd).
std::set<int> OpenFds() {
  std::set<int> fds;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return fds;
  int own = dirfd(d);
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    long fd = strtol(e->d_name, &end, 10);
    if (end != e->d_name && *end == '\0' && fd > 2 && fd != own) fds.insert(static_cast<int>(fd));
  }
  closedir(d);
  return fds;
}

// libtss2's TCTIs open their descriptors without O_CLOEXEC. The device TCTI (/dev/tpmrm0) holds its
// descriptor for the context's life: marked here, a child process of ours does not inherit it. (The
// swtpm TCTI connects for every command, which no mark here can cover: a child started while a command
// is in flight inherits that connection, and swtpm, serving one connection at a time, then waits on it.
// Long-lived children must be started with inherited descriptors closed; common/managed-process.ts
// does.) Marks every descriptor opened while the TCTI initialized; another thread's new descriptor
// marked too is harmless (Node opens all of its own close-on-exec).
void CloseOnExecSince(const std::set<int>& before) {
  for (int fd : OpenFds()) {
    if (before.count(fd) != 0) continue;
    int flags = fcntl(fd, F_GETFD);
    if (flags >= 0 && (flags & FD_CLOEXEC) == 0) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
  }
}

// Not queued: there is no context yet.
class OpenWorker : public Napi::AsyncWorker {
 public:
  OpenWorker(Napi::Env env, std::string tcti)
      : Napi::AsyncWorker(env, "tpmOpen"), deferred_(Napi::Promise::Deferred::New(env)), tcti_(std::move(tcti)),
        state_(std::make_shared<ContextState>()) {}
  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    std::lock_guard<std::timed_mutex> lock(state_->mu);
    // On every return: the TCTI's descriptors (and any ESAPI opened) become close-on-exec.
    struct CloexecGuard {
      std::set<int> before = OpenFds();
      ~CloexecGuard() { CloseOnExecSince(before); }
    } cloexec;
    TSS2_RC rc = Tss2_TctiLdr_Initialize(tcti_.c_str(), &state_->tcti);
    CloseOnExecSince(cloexec.before);  // at once, before the first command: narrows the window for a fork
    if (!Fail("Tss2_TctiLdr_Initialize", rc)) return;
    rc = Esys_Initialize(&state_->esys, state_->tcti, nullptr);
    if (!Fail("Esys_Initialize", rc)) return;
    rc = Esys_Startup(state_->esys, TPM2_SU_CLEAR);
    if (rc != TPM2_RC_INITIALIZE && !Fail("Esys_Startup", rc)) return;
    state_->open.store(true);
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (error_.set) {
      deferred_.Reject(ToJsError(env, error_).Value());
      return;
    }
    try {
      deferred_.Resolve(Context::NewInstance(env, state_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  bool Fail(const char* op, TSS2_RC rc) {
    if (rc == TSS2_RC_SUCCESS) return true;
    error_.Tss(op, rc);
    state_->FinalizeLocked();
    return false;
  }
  Napi::Promise::Deferred deferred_;
  std::string tcti_;
  std::shared_ptr<ContextState> state_;
  JobError error_;
};

}  // namespace

// -----------------------------------------------------------------------------------------------------

TSS2_RC SignDigest(ESYS_CONTEXT* esys, ESYS_TR key, const uint8_t* digest, size_t len, TPMI_ALG_HASH hashAlg,
                   TPMI_ALG_SIG_SCHEME sigAlg, TPMT_SIGNATURE** signature) {
  TPM2B_DIGEST d{};
  if (len > sizeof(d.buffer)) return TSS2_ESYS_RC_BAD_VALUE;
  d.size = static_cast<UINT16>(len);
  std::memcpy(d.buffer, digest, len);
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = sigAlg;
  scheme.details.any.hashAlg = hashAlg;
  TPMT_TK_HASHCHECK validation{};
  validation.tag = TPM2_ST_HASHCHECK;
  validation.hierarchy = TPM2_RH_NULL;
  validation.digest.size = 0;
  return Esys_Sign(esys, key, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &d, &scheme, &validation, signature);
}

ContextState::~ContextState() {
  std::lock_guard<std::timed_mutex> lock(mu);
  FinalizeLocked();
}

void ContextState::DropEkSessionLocked() {
  if (ekSession != ESYS_TR_NONE && esys != nullptr) {
    if (Esys_FlushContext(esys, ekSession) != TSS2_RC_SUCCESS) Esys_TR_Close(esys, &ekSession);
  }
  ekSession = ESYS_TR_NONE;
  ekSessionHash = 0;
}

void ContextState::FinalizeLocked() {
  DropEkSessionLocked();
  open.store(false);
  if (esys != nullptr) Esys_Finalize(&esys);
  if (tcti != nullptr) Tss2_TctiLdr_Finalize(&tcti);
  esys = nullptr;
  tcti = nullptr;
  engine::ForgetContext(this);
}

void FinalizeAll(OpenContexts& contexts) {
  std::vector<std::shared_ptr<ContextState>> states;
  {
    std::lock_guard<std::mutex> lock(contexts.mu);
    for (auto& w : contexts.states) {
      if (auto s = w.lock()) states.push_back(std::move(s));
    }
    contexts.states.clear();
  }
  for (auto& st : states) {
    // Wait for an in-flight ESAPI call (bounded, so a wedged TPM cannot hang process exit).
    if (st->mu.try_lock_for(std::chrono::seconds(5))) {
      st->FinalizeLocked();
      st->mu.unlock();
    }
  }
}

Napi::Function Context::Define(Napi::Env env) {
  return DefineClass(env, "TpmContext",
                     {
                         InstanceAccessor<&Context::GetClosed>("closed"),
                         InstanceMethod<&Context::GetRandom>("getRandom"),
                         InstanceMethod<&Context::GetCapability>("getCapability"),
                         InstanceMethod<&Context::PcrRead>("pcrRead"),
                         InstanceMethod<&Context::NvRead>("nvRead"),
                         InstanceMethod<&Context::NvDefineSpace>("nvDefineSpace"),
                         InstanceMethod<&Context::NvWrite>("nvWrite"),
                         InstanceMethod<&Context::CreatePrimary>("createPrimary"),
                         InstanceMethod<&Context::Create>("create"),
                         InstanceMethod<&Context::Load>("load"),
                         InstanceMethod<&Context::ReadPublic>("readPublic"),
                         InstanceMethod<&Context::FromPersistent>("fromPersistent"),
                         InstanceMethod<&Context::FlushForeign>("flushForeign"),
                         InstanceMethod<&Context::EvictControl>("evictControl"),
                         InstanceMethod<&Context::Flush>("flush"),
                         InstanceMethod<&Context::Sign>("sign"),
                         InstanceMethod<&Context::Certify>("certify"),
                         InstanceMethod<&Context::Quote>("quote"),
                         InstanceMethod<&Context::ActivateCredential>("activateCredential"),
                         InstanceMethod<&Context::RegisterTlsKey>("registerTlsKey"),
                         InstanceMethod<&Context::UnregisterTlsKey>("unregisterTlsKey"),
                         InstanceMethod<&Context::Close>("close"),
                     });
}

Napi::Object Context::NewInstance(Napi::Env env, std::shared_ptr<ContextState> st) {
  AddonData* data = env.GetInstanceData<AddonData>();
  {
    std::lock_guard<std::mutex> lock(data->contexts->mu);
    // Drop entries of contexts already gone, then remember this one for the env cleanup hook.
    auto& v = data->contexts->states;
    v.erase(std::remove_if(v.begin(), v.end(), [](const std::weak_ptr<ContextState>& w) { return w.expired(); }),
            v.end());
    v.push_back(st);
  }
  auto* holder = new std::shared_ptr<ContextState>(std::move(st));
  auto ext = Napi::External<std::shared_ptr<ContextState>>::New(
      env, holder, [](Napi::Env, std::shared_ptr<ContextState>* p) { delete p; });
  return data->contextCtor.New({ext});
}

Context::Context(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Context>(info), queue_(this) {
  if (info.Length() < 1 || !info[0].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), "TpmContext cannot be constructed directly; use open()");
  }
  state_ = *info[0].As<Napi::External<std::shared_ptr<ContextState>>>().Data();
}

Napi::Value Context::GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !IsOpen()); }

Napi::Value Context::GetRandom(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<GetRandomJob>(info.Env());
  Args(info, "getRandom", *job).U16(0, &job->count);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::GetCapability(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<GetCapabilityJob>(info.Env());
  Args a(info, "getCapability", *job);
  a.U32(0, &job->capability) && a.U32(1, &job->property) && a.U32(2, &job->count);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::PcrRead(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<PcrReadJob>(info.Env());
  Args(info, "pcrRead", *job)
      .Struct(0, Tss2_MU_TPML_PCR_SELECTION_Unmarshal, "TPML_PCR_SELECTION", &job->selection);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::NvRead(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<NvReadJob>(info.Env());
  Args(info, "nvRead", *job).U32(0, &job->index);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::NvDefineSpace(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<NvDefineSpaceJob>(info.Env());
  Args a(info, "nvDefineSpace", *job);
  uint32_t hierarchy = 0;
  if (a.U32(0, &hierarchy) && (hierarchy != TPM2_RH_PLATFORM && hierarchy != TPM2_RH_OWNER)) {
    job->error.Misuse(kCodeBadArgument, "nvDefineSpace: hierarchy must be TPM2_RH_PLATFORM or TPM2_RH_OWNER");
  }
  HierarchyTr(hierarchy, &job->hierarchy);
  a.U32(1, &job->index) && a.U32(2, &job->attributes) && a.U16(3, &job->size);
  if (!a.Failed() && (job->index >> TPM2_HR_SHIFT) != TPM2_HT_NV_INDEX) {
    job->error.Misuse(kCodeBadArgument, "nvDefineSpace: index must be 0x01xxxxxx");
  }
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::NvWrite(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<NvWriteJob>(info.Env());
  Args a(info, "nvWrite", *job);
  a.U32(0, &job->index) && a.Data(1, &job->data);
  if (!a.Failed() && (job->data.empty() || job->data.size() > 0xFFFF)) {
    job->error.Misuse(kCodeBadArgument, "nvWrite: data must be 1..65535 bytes");
  }
  if (!a.Failed() && !info[2].IsBoolean()) job->error.Misuse(kCodeBadArgument, "nvWrite: argument 3 must be a boolean");
  if (!a.Failed()) job->lock = info[2].As<Napi::Boolean>().Value();
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::CreatePrimary(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<CreatePrimaryJob>(info.Env());
  Args a(info, "createPrimary", *job);
  uint32_t hierarchy = 0;
  if (a.U32(0, &hierarchy) && !HierarchyTr(hierarchy, &job->hierarchy)) {
    job->error.Misuse(kCodeBadArgument, "createPrimary: unsupported hierarchy " + std::to_string(hierarchy));
  }
  a.Struct(1, Tss2_MU_TPM2B_PUBLIC_Unmarshal, "TPM2B_PUBLIC", &job->inPublic);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::Create(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<CreateJob>(info.Env());
  Args a(info, "create", *job);
  a.Handle(0, &job->parent) && a.Struct(1, Tss2_MU_TPM2B_PUBLIC_Unmarshal, "TPM2B_PUBLIC", &job->inPublic);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::Load(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<LoadJob>(info.Env());
  Args a(info, "load", *job);
  a.Handle(0, &job->parent) && a.Struct(1, Tss2_MU_TPM2B_PRIVATE_Unmarshal, "TPM2B_PRIVATE", &job->inPrivate) &&
      a.Struct(2, Tss2_MU_TPM2B_PUBLIC_Unmarshal, "TPM2B_PUBLIC", &job->inPublic);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::ReadPublic(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<ReadPublicJob>(info.Env());
  Args(info, "readPublic", *job).Handle(0, &job->handle);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::FlushForeign(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<FlushForeignJob>(info.Env());
  for (const auto& entry : tracked_) job->owned.push_back(entry.first);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::FromPersistent(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<FromPersistentJob>(info.Env());
  Args(info, "fromPersistent", *job).U32(0, &job->tpmHandle);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::EvictControl(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<EvictControlJob>(info.Env());
  Args a(info, "evictControl", *job);
  a.Handle(0, &job->object) && a.U32(1, &job->persistentHandle);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::Flush(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<FlushJob>(info.Env());
  Args(info, "flush", *job).Handle(0, &job->handle);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::Sign(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<SignJob>(info.Env());
  Args a(info, "sign", *job);
  a.Handle(0, &job->key) && a.Data(1, &job->digest) && a.U16(2, &job->hashAlg) && a.U16(3, &job->sigAlg);
  if (!a.Failed() && (job->digest.empty() || job->digest.size() > sizeof(TPMU_HA))) {
    job->error.Misuse(kCodeBadArgument, "sign: digest must be 1..64 bytes");
  }
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::Certify(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<CertifyJob>(info.Env());
  Args a(info, "certify", *job);
  a.Handle(0, &job->object) && a.Handle(1, &job->signer) && a.Sized(2, "TPM2B_DATA", &job->qualifyingData);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::Quote(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<QuoteJob>(info.Env());
  Args a(info, "quote", *job);
  a.Handle(0, &job->signer) && a.Sized(1, "TPM2B_DATA", &job->qualifyingData) &&
      a.Struct(2, Tss2_MU_TPML_PCR_SELECTION_Unmarshal, "TPML_PCR_SELECTION", &job->selection);
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::ActivateCredential(const Napi::CallbackInfo& info) {
  auto job = std::make_unique<ActivateCredentialJob>(info.Env());
  Args a(info, "activateCredential", *job);
  a.Handle(0, &job->activate) && a.Handle(1, &job->key) &&
      a.Struct(2, Tss2_MU_TPM2B_ID_OBJECT_Unmarshal, "TPM2B_ID_OBJECT", &job->credentialBlob) &&
      a.Struct(3, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal, "TPM2B_ENCRYPTED_SECRET", &job->secret) &&
      (info.Length() < 5 || info[4].IsUndefined() || a.U16(4, &job->sessionHash)) &&
      (info.Length() < 6 || info[5].IsUndefined() || a.Struct(5, Tss2_MU_TPML_DIGEST_Unmarshal, "TPML_DIGEST", &job->policyOr));
  return queue_.Submit(info.Env(), std::move(job));
}

Napi::Value Context::RegisterTlsKey(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  // Synchronous: argument conversion reuses Args through a throwaway job that is never submitted.
  class Scratch : public Job {
   public:
    explicit Scratch(Napi::Env e) : Job(e, "registerTlsKey") {}
    void Run(ContextState&) override {}
  } scratch(env);
  ESYS_TR handle = ESYS_TR_NONE;
  TPM2B_PUBLIC pub{};
  Args a(info, "registerTlsKey", scratch);
  a.Handle(0, &handle) && a.Struct(1, Tss2_MU_TPM2B_PUBLIC_Unmarshal, "TPM2B_PUBLIC", &pub);
  if (scratch.error.set) throw ToJsError(env, scratch.error);
  if (!IsOpen()) throw MisuseError(env, kCodeClosed, "registerTlsKey: TPM context is closed");
  if (!IsTracked(handle))
    throw MisuseError(env, kCodeUnknownHandle, "registerTlsKey: unknown handle " + std::to_string(handle));
  std::string code, message;
  std::string id = engine::RegisterKey(state_, handle, pub, &code, &message);
  if (id.empty()) throw MisuseError(env, code.c_str(), message);
  return Napi::String::New(env, id);
}

Napi::Value Context::UnregisterTlsKey(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString())
    throw MisuseError(env, kCodeBadArgument, "unregisterTlsKey: argument 1 must be a string");
  engine::UnregisterKey(info[0].As<Napi::String>().Utf8Value(), state_.get());
  return env.Undefined();
}

Napi::Value Context::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!IsOpen()) {
    // Already closed (idempotent). A close() still queued behind other work is a no-op when it runs.
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  return queue_.Submit(env, std::make_unique<CloseJob>(env));
}

Napi::Value Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(MisuseError(env, kCodeBadArgument, "open: argument 1 must be a TCTI string").Value());
    return d.Promise();
  }
  auto* worker = new OpenWorker(env, info[0].As<Napi::String>().Utf8Value());
  Napi::Promise p = worker->Promise();
  worker->Queue();
  return p;
}

}  // namespace tpmnative
