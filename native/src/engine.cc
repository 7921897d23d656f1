// The ENGINE API and EC_KEY_METHOD are deprecated in OpenSSL 3 but still exported by Node 20's
// statically linked OpenSSL; they are the one way to plug an external signer into tls.connect().
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "engine.h"

#include <dlfcn.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <tss2/tss2_rc.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "context.h"
#include "errors.h"

namespace tpmnative {
namespace engine {
namespace {

const char kBaseId[] = "tpmfleet";
const char kName[] = "tpm-fleet-identity: ECDSA signing with keys inside a TPM 2.0 (tpm2-tss ESAPI)";

struct KeyEntry {
  std::string id;
  std::shared_ptr<ContextState> state;
  ESYS_TR handle = ESYS_TR_NONE;
  std::vector<uint8_t> x, y;
  std::atomic<bool> valid{true};  // cleared on unregister / flush / close (under state->mu for the latter)
};
using EntryRef = std::shared_ptr<KeyEntry>;

// Process-wide; deliberately never destroyed (no static destructor may finalize a context at exit).
struct Registry {
  std::mutex mu;
  std::unordered_map<std::string, EntryRef> keys;
  uint64_t next = 1;
};
Registry& Reg() {
  static Registry* r = new Registry();
  return *r;
}

std::once_flag g_once;
bool g_ok = false;
std::string* g_id = new std::string(kBaseId);
ENGINE* g_engine = nullptr;
EC_KEY_METHOD* g_method = nullptr;
int g_exIndex = -1;

void Fail(const char* fmt, const char* arg) {
  ERR_raise_data(ERR_LIB_ENGINE, ERR_R_OPERATION_FAIL, fmt, arg);
}

// ex_data slot on EC_KEY: a heap std::shared_ptr<KeyEntry>.
void ExFree(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<EntryRef*>(ptr); }
int ExDup(CRYPTO_EX_DATA*, const CRYPTO_EX_DATA*, void** fromD, int, long, void*) {
  auto* p = static_cast<EntryRef*>(*fromD);
  if (p != nullptr) *fromD = new EntryRef(*p);
  return 1;
}

ECDSA_SIG* TpmSignSig(const unsigned char* dgst, int dlen, const BIGNUM*, const BIGNUM*, EC_KEY* ec) {
  auto* holder = static_cast<EntryRef*>(EC_KEY_get_ex_data(ec, g_exIndex));
  if (holder == nullptr || !*holder) {
    Fail("%s", "tpm engine: EC key has no TPM key attached");
    return nullptr;
  }
  KeyEntry& key = **holder;
  TPMI_ALG_HASH hashAlg;
  switch (dlen) {
    case 20: hashAlg = TPM2_ALG_SHA1; break;
    case 32: hashAlg = TPM2_ALG_SHA256; break;
    case 48: hashAlg = TPM2_ALG_SHA384; break;
    case 64: hashAlg = TPM2_ALG_SHA512; break;
    default:
      Fail("%s", "tpm engine: unsupported digest length");
      return nullptr;
  }
  TPMT_SIGNATURE* raw = nullptr;
  TSS2_RC rc;
  {
    // Waits for an in-flight thread-pool job of this context (which never waits for the JS thread).
    std::lock_guard<std::timed_mutex> lock(key.state->mu);
    if (!key.valid.load() || key.state->esys == nullptr) {
      Fail("tpm engine: key %s was released or its TPM context closed", key.id.c_str());
      return nullptr;
    }
    rc = SignDigest(key.state->esys, key.handle, dgst, static_cast<size_t>(dlen), hashAlg, TPM2_ALG_ECDSA, &raw);
  }
  EsysPtr<TPMT_SIGNATURE> sig(raw);
  if (rc != TSS2_RC_SUCCESS) {
    Fail("tpm engine: Esys_Sign: %s", Tss2_RC_Decode(rc));
    return nullptr;
  }
  if (sig->sigAlg != TPM2_ALG_ECDSA) {
    Fail("%s", "tpm engine: TPM returned a non-ECDSA signature");
    return nullptr;
  }
  const TPMS_SIGNATURE_ECDSA& e = sig->signature.ecdsa;
  BIGNUM* r = BN_bin2bn(e.signatureR.buffer, e.signatureR.size, nullptr);
  BIGNUM* s = BN_bin2bn(e.signatureS.buffer, e.signatureS.size, nullptr);
  ECDSA_SIG* out = ECDSA_SIG_new();
  if (r == nullptr || s == nullptr || out == nullptr || ECDSA_SIG_set0(out, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(out);
    Fail("%s", "tpm engine: out of memory");
    return nullptr;
  }
  return out;
}

int TpmSign(int, const unsigned char* dgst, int dlen, unsigned char* sig, unsigned int* siglen, const BIGNUM* kinv,
            const BIGNUM* r, EC_KEY* ec) {
  ECDSA_SIG* s = TpmSignSig(dgst, dlen, kinv, r, ec);
  if (s == nullptr) return 0;
  unsigned char* p = sig;
  int len = i2d_ECDSA_SIG(s, sig == nullptr ? nullptr : &p);
  ECDSA_SIG_free(s);
  if (len < 0) return 0;
  *siglen = static_cast<unsigned int>(len);
  return 1;
}

EVP_PKEY* LoadPrivkey(ENGINE* e, const char* keyId, UI_METHOD*, void*) {
  EntryRef entry;
  {
    std::lock_guard<std::mutex> lock(Reg().mu);
    auto it = Reg().keys.find(keyId == nullptr ? "" : keyId);
    if (it != Reg().keys.end()) entry = it->second;
  }
  if (!entry || !entry->valid.load()) {
    Fail("tpm engine: unknown key identifier %s", keyId == nullptr ? "(null)" : keyId);
    return nullptr;
  }
  EC_KEY* ec = EC_KEY_new_method(e);  // takes ENGINE_get_EC(e) == g_method
  EC_GROUP* group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  BIGNUM* x = BN_bin2bn(entry->x.data(), static_cast<int>(entry->x.size()), nullptr);
  BIGNUM* y = BN_bin2bn(entry->y.data(), static_cast<int>(entry->y.size()), nullptr);
  EVP_PKEY* pkey = nullptr;
  bool ok = ec != nullptr && group != nullptr && x != nullptr && y != nullptr && EC_KEY_set_group(ec, group) == 1 &&
            EC_KEY_set_public_key_affine_coordinates(ec, x, y) == 1;
  if (ok) {
    auto* holder = new EntryRef(entry);
    if (EC_KEY_set_ex_data(ec, g_exIndex, holder) != 1) {
      delete holder;
      ok = false;
    }
  }
  if (ok) {
    pkey = EVP_PKEY_new();
    ok = pkey != nullptr && EVP_PKEY_assign_EC_KEY(pkey, ec) == 1;
    if (ok) ec = nullptr;  // owned by pkey now
  }
  EC_GROUP_free(group);
  BN_free(x);
  BN_free(y);
  EC_KEY_free(ec);
  if (!ok) {
    EVP_PKEY_free(pkey);
    Fail("tpm engine: cannot build EC key for %s", keyId);
    return nullptr;
  }
  return pkey;
}

// Keep this shared object mapped for the life of the process: OpenSSL holds pointers into it.
void PinSelf() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&PinSelf), &info) != 0 && info.dli_fname != nullptr) {
    void* h = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    (void)h;  // intentionally never dlclose()d
  }
}

void Register() {
  ERR_set_mark();
  g_exIndex = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_EC_KEY, 0, nullptr, nullptr, ExDup, ExFree);
  g_method = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
  if (g_exIndex < 0 || g_method == nullptr) {
    ERR_pop_to_mark();
    return;
  }
  int (*sign)(int, const unsigned char*, int, unsigned char*, unsigned int*, const BIGNUM*, const BIGNUM*, EC_KEY*) =
      nullptr;
  int (*signSetup)(EC_KEY*, BN_CTX*, BIGNUM**, BIGNUM**) = nullptr;
  ECDSA_SIG* (*signSig)(const unsigned char*, int, const BIGNUM*, const BIGNUM*, EC_KEY*) = nullptr;
  EC_KEY_METHOD_get_sign(g_method, &sign, &signSetup, &signSig);
  EC_KEY_METHOD_set_sign(g_method, TpmSign, signSetup, TpmSignSig);

  // Another copy of this addon (a different path) may already own "tpmfleet": use a distinct id.
  if (ENGINE* existing = ENGINE_by_id(kBaseId)) {
    ENGINE_free(existing);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s-%lx", kBaseId, static_cast<unsigned long>(reinterpret_cast<uintptr_t>(&Reg())));
    *g_id = buf;
  }
  ENGINE* e = ENGINE_new();
  bool ok = e != nullptr && ENGINE_set_id(e, g_id->c_str()) == 1 && ENGINE_set_name(e, kName) == 1 &&
            ENGINE_set_load_privkey_function(e, LoadPrivkey) == 1 && ENGINE_set_EC(e, g_method) == 1 &&
            ENGINE_add(e) == 1;
  ERR_pop_to_mark();
  if (!ok) {
    if (e != nullptr) ENGINE_free(e);
    return;
  }
  g_engine = e;  // keep our structural reference for the life of the process
  PinSelf();
  g_ok = true;
}

// Moves entries matching `pred` out of the registry (destroyed by the caller after the lock is released:
// dropping the last reference to a ContextState finalizes it, which takes the registry lock again).
template <typename Pred>
std::vector<EntryRef> TakeIf(Pred pred) {
  std::vector<EntryRef> out;
  std::lock_guard<std::mutex> lock(Reg().mu);
  for (auto it = Reg().keys.begin(); it != Reg().keys.end();) {
    if (pred(*it->second)) {
      it->second->valid.store(false);
      out.push_back(std::move(it->second));
      it = Reg().keys.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

}  // namespace

bool EnsureRegistered() {
  std::call_once(g_once, Register);
  return g_ok;
}

const std::string& EngineId() { return *g_id; }

std::string RegisterKey(const std::shared_ptr<ContextState>& st, ESYS_TR handle, const TPM2B_PUBLIC& pub,
                        std::string* code, std::string* message) {
  if (!EnsureRegistered()) {
    *code = kCodeEngine;
    *message = "registerTlsKey: the OpenSSL engine could not be registered in this process";
    return "";
  }
  const TPMT_PUBLIC& p = pub.publicArea;
  if (p.type != TPM2_ALG_ECC || p.parameters.eccDetail.curveID != TPM2_ECC_NIST_P256) {
    *code = kCodeBadArgument;
    *message = "registerTlsKey: public area is not an ECC NIST P-256 key";
    return "";
  }
  if (!(p.objectAttributes & TPMA_OBJECT_SIGN_ENCRYPT) || (p.objectAttributes & TPMA_OBJECT_RESTRICTED)) {
    *code = kCodeBadArgument;
    *message = "registerTlsKey: key is not an unrestricted signing key";
    return "";
  }
  const TPM2B_ECC_PARAMETER& x = p.unique.ecc.x;
  const TPM2B_ECC_PARAMETER& y = p.unique.ecc.y;
  if (x.size == 0 || y.size == 0 || x.size > 32 || y.size > 32) {
    *code = kCodeBadArgument;
    *message = "registerTlsKey: public point has an invalid size";
    return "";
  }
  auto entry = std::make_shared<KeyEntry>();
  entry->state = st;
  entry->handle = handle;
  entry->x.assign(x.buffer, x.buffer + x.size);
  entry->y.assign(y.buffer, y.buffer + y.size);
  std::lock_guard<std::mutex> lock(Reg().mu);
  entry->id = "tpmkey-" + std::to_string(Reg().next++);
  Reg().keys.emplace(entry->id, entry);
  return entry->id;
}

void UnregisterKey(const std::string& id, const ContextState* owner) {
  auto taken = TakeIf([&](const KeyEntry& k) { return k.id == id && k.state.get() == owner; });
  (void)taken;  // released here, outside the registry lock
}

void InvalidateHandle(const ContextState* owner, ESYS_TR handle) {
  auto taken = TakeIf([&](const KeyEntry& k) { return k.state.get() == owner && k.handle == handle; });
}

void ForgetContext(const ContextState* owner) {
  auto taken = TakeIf([&](const KeyEntry& k) { return k.state.get() == owner; });
}

}  // namespace engine
}  // namespace tpmnative
