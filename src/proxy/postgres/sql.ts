/**
 * What a client's SQL does to its session, found by a small lexer: enough to know when a
 * statement leaves state on the backend that outlives the transaction (and so must pin the
 * client in transaction pooling), without parsing SQL. Comments, string literals, quoted
 * identifiers and dollar quotes are skipped, so `SELECT 'LISTEN x'` pins nothing.
 */

/** Why a client holds its backend for the rest of its session. */
export type PinReason =
  'set' | 'listen' | 'advisory_lock' | 'prepare' | 'prepared' | 'cursor_with_hold' | 'temp_table';

export const PIN_REASONS: readonly PinReason[] = [
  'set',
  'listen',
  'advisory_lock',
  'prepare',
  'prepared',
  'cursor_with_hold',
  'temp_table',
];

/**
 * Parameters PostgreSQL reports with ParameterStatus when they change (GUC_REPORT) and that
 * a client may SET: sidepool follows them per client and applies them when it binds a
 * backend, so setting them pins nothing. Lower case.
 */
export const TRACKED_PARAMETERS: ReadonlySet<string> = new Set([
  'application_name',
  'client_encoding',
  'datestyle',
  'intervalstyle',
  'timezone',
  'standard_conforming_strings',
  'default_transaction_read_only',
]);

export interface SessionEffect {
  /** The statement holds session state: why, and the statement's first words for logs. */
  pin?: { reason: PinReason; statement: string } | undefined;
  /** RESET ALL or DISCARD ALL: the backend's parameters went back to their defaults. */
  resetsParameters?: boolean;
  /** DISCARD ALL or DEALLOCATE [PREPARE] ALL: the session's prepared statements are gone. */
  dropsStatements?: boolean;
  /** DEALLOCATE [PREPARE] name, the text's only statement: that name. */
  deallocates?: string;
}

const TRIGGER =
  /set|listen|advisory|prepare|declare|temp|reset|discard|set_config|create|deallocate/i;

const ADVISORY_LOCKS = new Set([
  'pg_advisory_lock',
  'pg_advisory_lock_shared',
  'pg_try_advisory_lock',
  'pg_try_advisory_lock_shared',
]);

type Token = { kind: 'word'; text: string } | { kind: 'other'; text: string };

/** One statement's words as the lexer finds them. */
class Statement {
  readonly words: string[] = [];
  count = 0;
  withHold = false;
  onCommitDrop = false;
  private last1 = '';
  private last2 = '';

  add(token: Token): void {
    this.count++;
    const text = token.kind === 'word' ? token.text : token.text;
    if (this.words.length < 6) this.words.push(text);
    if (token.kind === 'word') {
      if (this.last1 === 'with' && text === 'hold') this.withHold = true;
      if (this.last2 === 'on' && this.last1 === 'commit' && text === 'drop')
        this.onCommitDrop = true;
    }
    this.last2 = this.last1;
    this.last1 = text;
  }
}

/**
 * The session effect of a Query's or Parse's SQL text, or undefined when it has none. A
 * text with several statements pins when any of them does.
 */
export function sessionEffect(sql: string): SessionEffect | undefined {
  if (!TRIGGER.test(sql)) return undefined;
  const effect: SessionEffect = {};
  let statement = new Statement();
  // set_config(…): the tokens of its last argument, to see whether it is `true` (local).
  let setConfigDepth = 0;
  let setConfigArg: string[] = [];
  let pendingSetConfig = false;
  let depth = 0;
  let statements = 0;
  let deallocated: string | undefined;
  const finish = (): void => {
    if (statement.count > 0) {
      statements++;
      deallocated = deallocatesOne(statement);
    }
    const pin = classify(statement);
    if (pin !== undefined && effect.pin === undefined) effect.pin = pin;
    if (resetsAll(statement)) effect.resetsParameters = true;
    if (dropsAll(statement)) effect.dropsStatements = true;
    statement = new Statement();
  };
  for (const token of tokens(sql)) {
    if (token.kind === 'other' && token.text === ';' && depth === 0) {
      finish();
      continue;
    }
    if (token.kind === 'other' && token.text === '(') {
      depth++;
      if (pendingSetConfig) {
        setConfigDepth = depth;
        setConfigArg = [];
      } else if (setConfigDepth > 0) setConfigArg.push('(');
      pendingSetConfig = false;
      statement.add(token);
      continue;
    }
    pendingSetConfig = false;
    if (token.kind === 'other' && token.text === ')') {
      if (setConfigDepth > 0 && depth === setConfigDepth) {
        const local = setConfigArg.length === 1 && isTrue(setConfigArg[0] as string);
        if (!local && effect.pin === undefined) {
          effect.pin = { reason: 'set', statement: 'set_config(…, false)' };
        }
        setConfigDepth = 0;
      } else if (setConfigDepth > 0) setConfigArg.push(')');
      depth = Math.max(0, depth - 1);
      statement.add(token);
      continue;
    }
    if (setConfigDepth > 0) {
      if (token.kind === 'other' && token.text === ',' && depth === setConfigDepth) {
        setConfigArg = [];
      } else setConfigArg.push(token.kind === 'word' ? token.text : token.text);
    }
    if (token.kind === 'word') {
      if (ADVISORY_LOCKS.has(token.text) && effect.pin === undefined) {
        effect.pin = { reason: 'advisory_lock', statement: token.text };
      }
      if (token.text === 'set_config') pendingSetConfig = true;
    }
    statement.add(token);
  }
  if (setConfigDepth > 0 && effect.pin === undefined) {
    effect.pin = { reason: 'set', statement: 'set_config(…)' };
  }
  finish();
  if (statements === 1 && deallocated !== undefined) effect.deallocates = deallocated;
  return effect.pin === undefined &&
    effect.resetsParameters !== true &&
    effect.dropsStatements !== true &&
    effect.deallocates === undefined
    ? undefined
    : effect;
}

function isTrue(token: string): boolean {
  return token === 'true' || token === "'t'" || token === "'true'" || token === "'on'";
}

function resetsAll(s: Statement): boolean {
  const [a, b] = s.words;
  return (a === 'reset' || a === 'discard') && b === 'all';
}

function dropsAll(s: Statement): boolean {
  const [a, b, c] = s.words;
  if (a === 'discard') return b === 'all';
  return a === 'deallocate' && (b === 'all' || (b === 'prepare' && c === 'all'));
}

/** The name in `DEALLOCATE [PREPARE] name` (not ALL), or undefined. */
function deallocatesOne(s: Statement): string | undefined {
  const [a, b, c] = s.words;
  if (a !== 'deallocate') return undefined;
  const name = b === 'prepare' ? c : b;
  if (s.count !== (b === 'prepare' ? 3 : 2) || name === undefined || name === 'all') {
    return undefined;
  }
  return name;
}

function classify(s: Statement): SessionEffect['pin'] {
  const w = s.words;
  const first = w[0];
  const text = (n: number): string => w.slice(0, n).join(' ');
  switch (first) {
    case 'set': {
      let i = 1;
      if (w[1] === 'local') return undefined;
      if (w[1] === 'session') {
        if (w[2] === 'characteristics' || w[2] === 'authorization') {
          return { reason: 'set', statement: text(3) };
        }
        i = 2;
      }
      const name = w[i];
      if (name === undefined || name === 'transaction' || name === 'constraints') {
        return undefined;
      }
      if (name === 'time' && w[i + 1] === 'zone') return undefined;
      // A qualified name (a.b) is a custom parameter, never tracked.
      if (w[i + 1] !== '.' && TRACKED_PARAMETERS.has(name)) return undefined;
      return { reason: 'set', statement: text(i + 1) };
    }
    case 'reset': {
      const name = w[1];
      if (name === 'all' || name === undefined) return undefined;
      if (name === 'time' && w[2] === 'zone') return undefined;
      if (w[2] !== '.' && TRACKED_PARAMETERS.has(name)) return undefined;
      return { reason: 'set', statement: text(2) };
    }
    case 'listen':
      return { reason: 'listen', statement: text(2) };
    case 'prepare':
      return w[1] === 'transaction' ? undefined : { reason: 'prepare', statement: text(2) };
    case 'declare':
      return s.withHold ? { reason: 'cursor_with_hold', statement: text(2) } : undefined;
    case 'create': {
      let i = 1;
      if (w[i] === 'or' && w[i + 1] === 'replace') i += 2;
      if (w[i] === 'global' || w[i] === 'local') i++;
      if (w[i] !== 'temp' && w[i] !== 'temporary') return undefined;
      if (w[i + 1] === 'table' && s.onCommitDrop) return undefined;
      return { reason: 'temp_table', statement: text(i + 2) };
    }
    default:
      return undefined;
  }
}

/** Lower-cased words, and single characters for the rest; literals as one opaque token. */
function* tokens(sql: string): Generator<Token> {
  const n = sql.length;
  let i = 0;
  while (i < n) {
    const c = sql.charCodeAt(i);
    // whitespace
    if (c === 32 || (c >= 9 && c <= 13)) {
      i++;
      continue;
    }
    // -- comment
    if (c === 45 && sql.charCodeAt(i + 1) === 45) {
      const eol = sql.indexOf('\n', i);
      i = eol < 0 ? n : eol + 1;
      continue;
    }
    // /* nested comment */
    if (c === 47 && sql.charCodeAt(i + 1) === 42) {
      let level = 1;
      i += 2;
      while (i < n && level > 0) {
        if (sql.charCodeAt(i) === 47 && sql.charCodeAt(i + 1) === 42) {
          level++;
          i += 2;
        } else if (sql.charCodeAt(i) === 42 && sql.charCodeAt(i + 1) === 47) {
          level--;
          i += 2;
        } else i++;
      }
      continue;
    }
    // 'string', E'string' handled with the word before it
    if (c === 39) {
      const end = skipString(sql, i, false);
      yield { kind: 'other', text: sql.slice(i, end).toLowerCase() };
      i = end;
      continue;
    }
    // "identifier": case kept, as PostgreSQL does
    if (c === 34) {
      let j = i + 1;
      for (;;) {
        const q = sql.indexOf('"', j);
        if (q < 0) {
          j = n;
          break;
        }
        if (sql.charCodeAt(q + 1) === 34) j = q + 2;
        else {
          j = q + 1;
          break;
        }
      }
      yield { kind: 'word', text: sql.slice(i + 1, j - 1).replace(/""/g, '"') };
      i = j;
      continue;
    }
    // $tag$ … $tag$, or a $1 parameter
    if (c === 36) {
      const m = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.exec(sql.slice(i, i + 64));
      if (m !== null) {
        const tag = m[0];
        const close = sql.indexOf(tag, i + tag.length);
        i = close < 0 ? n : close + tag.length;
        yield { kind: 'other', text: '$' };
        continue;
      }
      let j = i + 1;
      while (j < n && isDigit(sql.charCodeAt(j))) j++;
      yield { kind: 'other', text: sql.slice(i, j) };
      i = j;
      continue;
    }
    if (isWordStart(c)) {
      let j = i + 1;
      while (j < n && isWordPart(sql.charCodeAt(j))) j++;
      // E'…' (and e'…'): backslash escapes
      if (j === i + 1 && (c === 69 || c === 101) && sql.charCodeAt(j) === 39) {
        const end = skipString(sql, j, true);
        yield { kind: 'other', text: sql.slice(j, end).toLowerCase() };
        i = end;
        continue;
      }
      yield { kind: 'word', text: sql.slice(i, j).toLowerCase() };
      i = j;
      continue;
    }
    if (isDigit(c)) {
      let j = i + 1;
      while (j < n && (isWordPart(sql.charCodeAt(j)) || sql.charCodeAt(j) === 46)) j++;
      yield { kind: 'other', text: sql.slice(i, j) };
      i = j;
      continue;
    }
    yield { kind: 'other', text: sql[i] as string };
    i++;
  }
}

/** The index after a quoted string that starts at `i` (the opening quote). */
function skipString(sql: string, i: number, backslashes: boolean): number {
  const n = sql.length;
  let j = i + 1;
  while (j < n) {
    const c = sql.charCodeAt(j);
    if (backslashes && c === 92) {
      j += 2;
      continue;
    }
    if (c === 39) {
      if (sql.charCodeAt(j + 1) === 39) {
        j += 2;
        continue;
      }
      return j + 1;
    }
    j++;
  }
  return n;
}

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}

function isWordStart(c: number): boolean {
  return (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c >= 128;
}

function isWordPart(c: number): boolean {
  return isWordStart(c) || isDigit(c) || c === 36;
}
