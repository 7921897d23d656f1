import type { Transport } from '../../../common/transport/transport.js';

/**
 * The broker's retained message on `topic` through `transport` (connected), or undefined when none
 * arrives within `waitMs` of the SUBACK (mosquitto sends retained messages right after it). The
 * RevocationService uses it to learn whether the broker still holds the devices' CRL base.
 */
export async function readRetained(transport: Transport, topic: string, waitMs = 500): Promise<Buffer | undefined> {
  let got: ((p: Buffer) => void) | undefined;
  const arrived = new Promise<Buffer>((resolve) => (got = resolve));
  const sub = await transport.subscribe(topic, (m) => {
    if (m.retain) got?.(m.payload);
  });
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([arrived, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), waitMs)))]);
  } finally {
    clearTimeout(timer);
    await sub.unsubscribe();
  }
}
