// sdNotify(state): the service manager notification of sd_notify(3), without libsystemd.
//
// One datagram to the AF_UNIX socket named by $NOTIFY_SOCKET: a filesystem path ("/run/systemd/notify")
// or, when it starts with '@', a name in the abstract namespace ('@' becomes the leading NUL). Node has
// no AF_UNIX datagram sockets, hence this function. It never blocks: a full receive queue fails with
// EAGAIN instead of stalling the event loop. The receiver (systemd, with SO_PASSCRED) gets the sender's
// credentials from the kernel; nothing is attached here.
#include "sd-notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

#include "errors.h"

namespace tpmnative {

const char* const kCodeSdNotifyFailed = "SD_NOTIFY_FAILED";
const char* const kCodeSdNotifyBadSocket = "SD_NOTIFY_BAD_SOCKET";

namespace {

std::string ErrnoText(int err) {
  char buf[256];
  // GNU strerror_r returns the message (possibly not in buf).
  const char* s = strerror_r(err, buf, sizeof buf);
  return s ? s : "unknown error";
}

Napi::Error Failed(Napi::Env env, const std::string& what, int err) {
  Napi::Error e = MisuseError(env, kCodeSdNotifyFailed, what + ": " + ErrnoText(err));
  e.Value().Set("errno", Napi::Number::New(env, err));
  return e;
}

// Closes the descriptor on every path out.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString())
    throw MisuseError(env, kCodeBadArgument, "sdNotify: argument 1 must be a string");
  const std::string state = info[0].As<Napi::String>().Utf8Value();
  if (state.empty()) throw MisuseError(env, kCodeBadArgument, "sdNotify: the state must not be empty");

  // Read on the JS thread; Node's process.env writes go to the same environment.
  const char* socketEnv = getenv("NOTIFY_SOCKET");
  if (socketEnv == nullptr || socketEnv[0] == '\0') return Napi::Boolean::New(env, false);
  const std::string path(socketEnv);

  sockaddr_un addr;
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  socklen_t addrLen;
  if (path[0] == '@') {
    // Abstract namespace: sun_path[0] is NUL, the name follows, the length counts exactly its bytes.
    if (path.size() > sizeof addr.sun_path)
      throw MisuseError(env, kCodeSdNotifyBadSocket,
                        "NOTIFY_SOCKET is longer than an AF_UNIX address allows (" + std::to_string(path.size()) + " > " +
                            std::to_string(sizeof addr.sun_path) + " bytes)");
    std::memcpy(addr.sun_path + 1, path.data() + 1, path.size() - 1);
    addrLen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  } else if (path[0] == '/') {
    // A filesystem path, NUL-terminated within sun_path.
    if (path.size() >= sizeof addr.sun_path)
      throw MisuseError(env, kCodeSdNotifyBadSocket,
                        "NOTIFY_SOCKET is longer than an AF_UNIX path allows (" + std::to_string(path.size()) + " >= " +
                            std::to_string(sizeof addr.sun_path) + " bytes)");
    std::memcpy(addr.sun_path, path.data(), path.size());
    addrLen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  } else {
    throw MisuseError(env, kCodeSdNotifyBadSocket, "NOTIFY_SOCKET must be an absolute path or start with '@'");
  }

  Fd sock{socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
  if (sock.fd < 0) throw Failed(env, "socket(AF_UNIX, SOCK_DGRAM)", errno);
  ssize_t sent;
  do {
    sent = sendto(sock.fd, state.data(), state.size(), MSG_DONTWAIT | MSG_NOSIGNAL,
                  reinterpret_cast<const sockaddr*>(&addr), addrLen);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) throw Failed(env, "sendto(" + path + ")", errno);
  if (static_cast<size_t>(sent) != state.size())
    throw MisuseError(env, kCodeSdNotifyFailed, "sendto(" + path + "): short datagram");
  return Napi::Boolean::New(env, true);
}

}  // namespace tpmnative
