import type { Clock } from '../../../common/clock.js';
import { isCodedError } from '../../../common/coded-error.js';
import { CLIENT_ID_PREFIX, type Topics } from '../../../common/protocol/topics.js';
import { MqttTransport } from '../../../common/transport/mqtt-transport.js';
import { DEFAULT_SRK_HANDLE, NativeTpm } from '../../../native/lib/native-tpm.js';
import type { Tpm, TpmKey } from '../../../native/lib/tpm.js';
import { fromStored } from '../enrollment.js';
import type { StoredBlobs } from '../store.js';
import { askFleetTime, type TimeSample } from '../fleet-clock.js';

/**
 * The device's own session, as the agent opens it: mutual TLS on the device listener with the
 * identity key inside the TPM (loaded for the handshake only, then flushed), MQTT CONNECT, then one
 * clock check (`time/request` → `time/reply`, answered by the bridge's TimeService).
 *
 * Only while the agent is stopped: the broker names every mutual-TLS session by the certificate's CN,
 * so this session would take the running agent's over (and the agent would take it back).
 */
export type SessionProbe =
  | { readonly kind: 'connected'; readonly sample?: TimeSample; readonly noReply?: string }
  | { readonly kind: 'refused'; readonly message: string }
  /** The identity key could not be used (TPM error, no SRK): nothing was sent. */
  | { readonly kind: 'key'; readonly code: string; readonly message: string }
  | { readonly kind: 'network'; readonly code: string; readonly message: string };

export interface SessionProbeOptions {
  readonly tcti: string;
  readonly url: string;
  readonly deviceId: string;
  readonly topics: Topics;
  readonly certificate: string;
  readonly chain: readonly string[];
  readonly key: StoredBlobs;
  readonly trustBundle: readonly string[];
  readonly clock: Clock;
  readonly timeoutMs: number;
  readonly openTpm?: (tcti: string) => Promise<Tpm>;
}

export async function probeDeviceSession(o: SessionProbeOptions): Promise<SessionProbe> {
  let tpm: Tpm | undefined;
  let key: TpmKey | undefined;
  let tls: ReturnType<Tpm['tlsKey']> | undefined;
  const release = async () => {
    if (tls) tpm?.releaseTlsKey(tls);
    tls = undefined;
    if (key) await tpm?.flush(key).catch(() => undefined);
    key = undefined;
  };
  try {
    try {
      tpm = await (o.openTpm ?? ((t: string) => NativeTpm.open(t)))(o.tcti);
      const srk = await tpm.loadPersistent(DEFAULT_SRK_HANDLE);
      if (!srk) return { kind: 'key', code: 'TPM_NO_SRK', message: `no storage root key at 0x${DEFAULT_SRK_HANDLE.toString(16)}` };
      key = await tpm.loadKey(srk, fromStored(o.key));
      tls = tpm.tlsKey(key);
    } catch (e) {
      return { kind: 'key', code: isCodedError(e) ? e.code : 'TPM_ERROR', message: (e as Error).message };
    }
    const transport = new MqttTransport({
      url: o.url,
      clientId: `${CLIENT_ID_PREFIX}${o.deviceId}`,
      reconnectPeriodMs: 0,
      connectTimeoutMs: o.timeoutMs,
      tls: { cert: [o.certificate, ...o.chain].join('\n'), ca: [...o.trustBundle], ...tls },
      onError: () => undefined,
    });
    try {
      try {
        await transport.connect();
      } catch (e) {
        const code = isCodedError(e) ? e.code : 'UNKNOWN';
        if (code === 'TRANSPORT_TLS_FAILED' || code === 'TRANSPORT_CONNECT_REFUSED') return { kind: 'refused', message: (e as Error).message };
        return { kind: 'network', code, message: (e as Error).message };
      }
      // The handshake is done: the key goes now, as the agent does (TPM slots are scarce).
      await release();
      const sample = await askFleetTime(transport, o);
      return sample ? { kind: 'connected', sample } : { kind: 'connected', noReply: `no time/reply within ${o.timeoutMs} ms (is the bridge running, with its time service?)` };
    } finally {
      await transport.close().catch(() => undefined);
    }
  } finally {
    await release();
    await tpm?.close().catch(() => undefined);
  }
}
