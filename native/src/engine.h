// OpenSSL ENGINE that lets Node's TLS sign with a key inside the TPM:
//   tls.connect({ cert, privateKeyEngine: EngineId(), privateKeyIdentifier: <id from RegisterKey> })
// Registered once per process (Node's statically linked OpenSSL exports the ENGINE API to addons).
// The sign callback runs synchronously on the thread doing the handshake (the JS thread) and takes the
// context mutex, so it waits for an in-flight thread-pool job; it fails cleanly (never crashes) when
// the key was unregistered/flushed or the context closed.
#pragma once

#include <tss2/tss2_esys.h>

#include <memory>
#include <string>

namespace tpmnative {

struct ContextState;

namespace engine {

// Registers the ENGINE (idempotent, thread-safe). Returns false if OpenSSL refused.
bool EnsureRegistered();
// Id to pass as privateKeyEngine (normally "tpmfleet").
const std::string& EngineId();

// Adds a key to the process-wide registry. `pub` must be an ECC NIST P-256 signing key.
// On failure returns "" and sets *code (TPM_BAD_ARGUMENT / TPM_ENGINE) and *message.
std::string RegisterKey(const std::shared_ptr<ContextState>& st, ESYS_TR handle, const TPM2B_PUBLIC& pub,
                        std::string* code, std::string* message);
// Removes a key registered by `owner` (no-op for unknown ids). Existing TLS contexts using it fail to sign.
void UnregisterKey(const std::string& id, const ContextState* owner);
// The handle was flushed/evicted: its keys stop signing and leave the registry. Caller holds owner->mu.
void InvalidateHandle(const ContextState* owner, ESYS_TR handle);
// The context is being finalized: all its keys stop signing and leave the registry. Caller holds owner->mu.
void ForgetContext(const ContextState* owner);

}  // namespace engine
}  // namespace tpmnative
