/**
 * Notifications to the service manager (sd_notify(3)): `READY=1`, `STATUS=…`, `WATCHDOG=1`,
 * `EXTEND_TIMEOUT_USEC=…`, `STOPPING=1`, one newline-separated datagram per call. Node has no AF_UNIX
 * datagram sockets, so the native addon sends it (native/src/sd-notify.cc) to the socket systemd names
 * in $NOTIFY_SOCKET; nothing here reads the environment.
 */
import { CodedError } from '../../common/coded-error.js';
import { loadBinding, type RawBinding } from './binding.js';

/**
 * SD_NOTIFY_FAILED: the datagram could not be sent (socket or sendto failed; the message has the errno
 * text), SD_NOTIFY_BAD_SOCKET: $NOTIFY_SOCKET is not an absolute path or '@name', or too long for an
 * AF_UNIX address, SD_NOTIFY_BAD_STATE: an empty state, SD_NOTIFY_UNAVAILABLE: the native addon could
 * not be loaded.
 */
export type SdNotifyErrorCode = 'SD_NOTIFY_FAILED' | 'SD_NOTIFY_BAD_SOCKET' | 'SD_NOTIFY_BAD_STATE' | 'SD_NOTIFY_UNAVAILABLE';

export class SdNotifyError extends CodedError<SdNotifyErrorCode> {}

/** Tells the service manager how the service is doing. */
export interface ServiceNotifier {
  /**
   * Sends `state` (newline-separated assignments, e.g. "READY=1\nSTATUS=online"). false when there is no
   * service manager to tell ($NOTIFY_SOCKET unset); throws SdNotifyError when sending failed.
   */
  notify(state: string): boolean;
}

const NATIVE_CODES: ReadonlySet<string> = new Set(['SD_NOTIFY_FAILED', 'SD_NOTIFY_BAD_SOCKET']);

/**
 * The notifier backed by the native addon (loaded at the first notify, not before). `binding` is for
 * tests; default: the addon loadBinding() finds.
 */
export function nativeServiceNotifier(binding: () => Pick<RawBinding, 'sdNotify'> = loadBinding): ServiceNotifier {
  return {
    notify(state: string): boolean {
      if (state === '') throw new SdNotifyError('SD_NOTIFY_BAD_STATE', 'a notification needs at least one assignment');
      let b: Pick<RawBinding, 'sdNotify'>;
      try {
        b = binding();
      } catch (e) {
        throw new SdNotifyError('SD_NOTIFY_UNAVAILABLE', `cannot notify the service manager: ${(e as Error).message}`, { cause: e });
      }
      try {
        return b.sdNotify(state);
      } catch (e) {
        const code = (e as { code?: unknown }).code;
        if (typeof code === 'string' && NATIVE_CODES.has(code)) throw new SdNotifyError(code as SdNotifyErrorCode, (e as Error).message, { cause: e });
        throw e;
      }
    },
  };
}
