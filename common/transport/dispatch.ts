import { TransportError, type IncomingMessage, type MessageHandler, type TransportErrorHook } from './transport.js';

/**
 * Runs a subscription handler so that neither a throw nor a rejection can escape into the client's
 * event loop (which would kill the connection or the process); both go to `onError` instead.
 */
export function invokeHandler(handler: MessageHandler, msg: IncomingMessage, filter: string, onError: TransportErrorHook): void {
  const fail = (cause: unknown): void => {
    reportSafely(
      onError,
      new TransportError('TRANSPORT_HANDLER_FAILED', `message handler for ${filter} failed on ${msg.topic}`, {
        cause,
        details: { filter, topic: msg.topic },
      }),
    );
  };
  try {
    const result = handler(msg);
    if (result && typeof (result as Promise<void>).then === 'function') (result as Promise<void>).then(undefined, fail);
  } catch (e) {
    fail(e);
  }
}

/** Connection listeners get the same protection as message handlers. */
export function notifyListeners(
  listeners: Iterable<(connected: boolean) => void>,
  connected: boolean,
  onError: TransportErrorHook,
): void {
  for (const listener of [...listeners]) {
    try {
      listener(connected);
    } catch (e) {
      reportSafely(onError, new TransportError('TRANSPORT_HANDLER_FAILED', 'connection listener failed', { cause: e }));
    }
  }
}

/** A throwing error hook must not turn into the crash it exists to prevent. */
export function reportSafely(onError: TransportErrorHook, err: TransportError): void {
  try {
    onError(err);
  } catch (e) {
    console.error('[transport] onError hook threw while reporting', err, e);
  }
}
