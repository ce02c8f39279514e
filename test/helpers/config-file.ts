import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Writes `text` to a sidepool.yaml in a fresh temporary directory; returns its path. */
export async function configFile(text: string, name = 'sidepool.yaml'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sidepool-config-'));
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}
