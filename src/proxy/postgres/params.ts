import type { Backend } from './backend.js';

/** A client's parameter: the name as the server reports it (or as the client sent it) and its value. */
export interface ClientParameter {
  name: string;
  value: string;
}

/** Startup keys that are not run-time parameters. */
const NOT_PARAMETERS = new Set(['user', 'database', 'replication', 'options']);

/** Reported by the server, never set by a client. */
const SERVER_ONLY = new Set([
  'server_version',
  'server_encoding',
  'integer_datetimes',
  'is_superuser',
  'session_authorization',
  'in_hot_standby',
  'scram_iterations',
]);

/**
 * A client's startup parameters as run-time parameters, lower-case name → parameter: every
 * key but user, database and replication, with `options` (`-c name=value`,
 * `--name=value`, backslash-escaped spaces) opened up. Throws on options other than those.
 */
export function clientParameters(
  startup: ReadonlyMap<string, string>,
): Map<string, ClientParameter> {
  const out = new Map<string, ClientParameter>();
  for (const [name, value] of startup) {
    if (NOT_PARAMETERS.has(name)) continue;
    out.set(name.toLowerCase(), { name, value });
  }
  const options = startup.get('options');
  if (options !== undefined) {
    const words = splitOptions(options);
    for (let i = 0; i < words.length; i++) {
      const word = words[i] as string;
      let setting: string | undefined;
      if (word === '-c') setting = words[++i];
      else if (word.startsWith('-c')) setting = word.slice(2);
      else if (word.startsWith('--')) setting = word.slice(2);
      else {
        throw new Error(`unsupported option in "options": ${word} (only -c name=value is pooled)`);
      }
      const eq = setting?.indexOf('=') ?? -1;
      if (setting === undefined || eq <= 0) {
        throw new Error(`invalid option in "options": expected -c name=value`);
      }
      const name = setting.slice(0, eq).replace(/-/g, '_');
      out.set(name.toLowerCase(), { name, value: setting.slice(eq + 1) });
    }
  }
  return out;
}

/** PostgreSQL's pg_split_opts: spaces separate, a backslash escapes the next character. */
function splitOptions(text: string): string[] {
  const words: string[] = [];
  let word = '';
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (c === '\\' && i + 1 < text.length) {
      word += text[++i];
      inWord = true;
    } else if (c === ' ' || c === '\t') {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (inWord) words.push(word);
  return words;
}

/**
 * A client's parameter set as one string: clients with equal sets have equal keys, which
 * is what `Backend.paramsMatched` remembers.
 */
export function parametersKey(params: ReadonlyMap<string, ClientParameter>): string {
  let key = '';
  for (const [name, { value }] of params) {
    if (!SERVER_ONLY.has(name)) key += `${name}\0${value}\0`;
  }
  return key;
}

/** The value a backend runs with now, as far as sidepool knows. */
function backendValue(backend: Backend, key: string): string | undefined {
  return backend.paramsByKey.get(key) ?? backend.applied.get(key);
}

/**
 * One query that makes the backend run with the client's parameters, or undefined when it
 * already does: `set_config` for each that differs (it parses lists such as search_path
 * the way the config file does) and RESET for each that an earlier client set and this
 * one did not. Marks what it sets in `backend.applied`; the caller clears that if the
 * query fails.
 */
export function setParametersSql(
  params: ReadonlyMap<string, ClientParameter>,
  backend: Backend,
  mark = true,
): string | undefined {
  const sets: string[] = [];
  const resets: string[] = [];
  const reported = backend.paramsByKey;
  for (const [key, { name, value }] of params) {
    if (SERVER_ONLY.has(key)) continue;
    if (backendValue(backend, key) === value) continue;
    sets.push(`pg_catalog.set_config(${literal(name)}, ${literal(value)}, false)`);
    if (mark && !reported.has(key)) backend.applied.set(key, value);
  }
  for (const key of [...backend.applied.keys()]) {
    if (!params.has(key)) {
      resets.push(`RESET ${identifier(key)}`);
      if (mark) backend.applied.delete(key);
    }
  }
  if (sets.length === 0 && resets.length === 0) return undefined;
  if (mark) backend.paramsMatched = undefined;
  const statements = [...resets];
  if (sets.length > 0) statements.push(`SELECT ${sets.join(', ')}`);
  return statements.join('; ');
}

/** A string literal that means the same whatever standard_conforming_strings says. */
function literal(value: string): string {
  if (!value.includes("'") && !value.includes('\\')) return `'${value}'`;
  let tag = 'sp';
  while (value.includes(`$${tag}$`)) tag += 'x';
  return `$${tag}$${value}$${tag}$`;
}

function identifier(name: string): string {
  if (/^[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)?$/.test(name)) return name;
  return `"${name.replace(/"/g, '""')}"`;
}
