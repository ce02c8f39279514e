import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir } from './tmp.js';

/** Writes `text` to a sidepool.yaml in a fresh temporary directory; returns its path. */
export async function configFile(text: string, name = 'sidepool.yaml'): Promise<string> {
  const dir = tempDir('sidepool-config-');
  const path = join(dir, name);
  await writeFile(path, text);
  return path;
}
