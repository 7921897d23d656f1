// sdNotify(state): one sd_notify(3) datagram to $NOTIFY_SOCKET (sd-notify.cc).
#pragma once

#include <napi.h>

namespace tpmnative {

// Codes of the errors sdNotify throws besides TPM_BAD_ARGUMENT (a non-string or empty state).
extern const char* const kCodeSdNotifyFailed;     // SD_NOTIFY_FAILED: socket() or sendto() failed (errno text)
extern const char* const kCodeSdNotifyBadSocket;  // SD_NOTIFY_BAD_SOCKET: NOTIFY_SOCKET is no usable address

// Synchronous. false when NOTIFY_SOCKET is unset or empty; true once the datagram is sent.
Napi::Value SdNotify(const Napi::CallbackInfo& info);

}  // namespace tpmnative
