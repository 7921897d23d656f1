import { isIP } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';

/**
 * One server-authenticated TLS handshake with a broker listener, verifying its certificate against the
 * device's trust bundle (and the host name or IP it is reached by), then closed: no MQTT, no client
 * certificate, no session of anyone's taken over. On the mutual-TLS listener the server asks for a
 * certificate and gets none; under TLS 1.3 the client has verified the server before the broker
 * refuses it, which is all this probe asks.
 */
export type ListenerProbe =
  | { readonly kind: 'ok'; readonly protocol: string; readonly subject: string; readonly notAfter: string }
  | { readonly kind: 'down' | 'untrusted' | 'tls'; readonly message: string };

const UNTRUSTED = /CERT|SIGNATURE|ISSUER|ALTNAME|HOSTNAME|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)/;

export function hostPort(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(u.port) };
}

export function probeListener(url: string, ca: readonly string[], timeoutMs: number): Promise<ListenerProbe> {
  const { host, port } = hostPort(url);
  return new Promise((resolve) => {
    let socket: TLSSocket | undefined;
    let settled = false;
    const done = (r: ListenerProbe) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket?.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ kind: 'down', message: `${host}:${port} did not complete a TLS handshake within ${timeoutMs} ms` }), timeoutMs);
    socket = connect({ host, port, ca: [...ca], ...(isIP(host) ? {} : { servername: host }), rejectUnauthorized: true });
    socket.once('secureConnect', () => {
      const s = socket!;
      const peer = s.getPeerCertificate();
      done({ kind: 'ok', protocol: s.getProtocol() ?? 'TLS', subject: [peer.subject?.CN ?? '?'].flat().join(','), notAfter: peer.valid_to ?? '?' });
    });
    socket.once('error', (e: NodeJS.ErrnoException) => {
      const code = e.code ?? '';
      if (['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'ECONNRESET'].includes(code)) {
        done({ kind: 'down', message: `${host}:${port}: ${code}` });
      } else if (UNTRUSTED.test(code)) {
        done({ kind: 'untrusted', message: `${host}:${port}: the server certificate does not verify against the trust bundle (${code}: ${e.message})` });
      } else {
        done({ kind: 'tls', message: `${host}:${port}: ${code || 'TLS error'}: ${e.message}` });
      }
    });
  });
}
