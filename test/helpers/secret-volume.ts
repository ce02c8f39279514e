import { copyFile, mkdir, rename, rm, symlink } from 'node:fs/promises';
import path from 'node:path';

/**
 * A directory laid out the way the kubelet lays out a Secret volume, and updated the way
 * it updates one (its AtomicWriter): each version of the files lives in a hidden
 * timestamped directory, `..data` is a symlink to the current one, and every file name is
 * a symlink through `..data`. An update writes a new directory, points `..data_tmp` at it,
 * renames `..data_tmp` over `..data` (the atomic swap), and removes the old directory.
 */
export class SecretVolume {
  private version = 0;
  private current: string | undefined;

  constructor(readonly dir: string) {}

  /** Creates the volume with these files (name in the volume → source file to copy). */
  async create(files: Record<string, string>): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const versionDir = await this.writeVersion(files);
    await symlink(versionDir, path.join(this.dir, '..data'));
    for (const name of Object.keys(files)) {
      await symlink(path.join('..data', name), path.join(this.dir, name));
    }
    this.current = versionDir;
  }

  /** Swaps in a new version of the files, atomically, as the kubelet does. */
  async update(files: Record<string, string>): Promise<void> {
    const versionDir = await this.writeVersion(files);
    const tmp = path.join(this.dir, '..data_tmp');
    await symlink(versionDir, tmp);
    await rename(tmp, path.join(this.dir, '..data'));
    if (this.current !== undefined)
      await rm(path.join(this.dir, this.current), { recursive: true });
    this.current = versionDir;
  }

  /** The path an app is configured with: the symlink in the volume. */
  path(name: string): string {
    return path.join(this.dir, name);
  }

  private async writeVersion(files: Record<string, string>): Promise<string> {
    const versionDir = `..2026_01_01_00_00_${String(this.version++).padStart(2, '0')}.${process.pid}`;
    await mkdir(path.join(this.dir, versionDir));
    for (const [name, source] of Object.entries(files)) {
      await copyFile(source, path.join(this.dir, versionDir, name));
    }
    return versionDir;
  }
}
