import http from 'node:http';

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One HTTP request to 127.0.0.1 on a fresh connection, with the headers given (Host too). */
export function request(
  port: number,
  path: string,
  method = 'GET',
  headers?: Record<string, string>,
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const options = { host: '127.0.0.1', port, path, method, headers, agent: false };
    const req = http.request(options, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Parses Prometheus text into `name{labels}` → value; labels sorted by name. */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!match) continue;
    const [, name, , labelText, value] = match;
    const labels = [...(labelText ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)]
      .map((m) => `${m[1]}="${m[2]}"`)
      .sort();
    out.set(labels.length ? `${name}{${labels.join(',')}}` : (name as string), Number(value));
  }
  return out;
}

/** Looks up a series; labels may be given in any order. */
export function metric(
  metrics: Map<string, number>,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const parts = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort();
  return metrics.get(parts.length ? `${name}{${parts.join(',')}}` : name);
}
