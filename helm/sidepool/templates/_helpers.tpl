{{/*
Helpers. The ones a parent chart calls for the sidecar (sidepool.sidecar*, and everything
they use) take a context with only `Values` (this chart's values, as the parent sees
them) and `Release`: they never read .Chart, .Capabilities or .Files, so
  (dict "Values" .Values.sidepool "Release" .Release)
works as well as this chart's own `.`.
*/}}

{{- define "sidepool.name" -}}
{{- default "sidepool" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sidepool.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "sidepool.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sidepool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidepool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels for the objects this chart renders itself. */}}
{{- define "sidepool.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sidepool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ ternary "sidecar-config" "pool" (eq .Values.mode "sidecar") }}
{{- end }}

{{- define "sidepool.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{/* Whole seconds, rounded up, of a duration: 250ms, 5s, 5m, 1h, or milliseconds. */}}
{{- define "sidepool.seconds" -}}
{{- if kindIs "string" . }}
{{- $number := regexFind "^[0-9]+" . }}
{{- $n := int64 $number }}
{{- $unit := trimPrefix $number . }}
{{- if eq $unit "h" }}{{ mul $n 3600 }}
{{- else if eq $unit "m" }}{{ mul $n 60 }}
{{- else if eq $unit "s" }}{{ $n }}
{{- else }}{{ div (add $n 999) 1000 }}
{{- end }}
{{- else }}
{{- div (add (int64 .) 999) 1000 }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the explicit value, or drain.delay + drain.timeout +
terminationGraceMarginSeconds. Fails when the explicit value does not cover the drain.
A pod whose app needs time of its own to stop (a native sidecar is stopped after the
app) adds that: {{ add 15 (include "sidepool.terminationGracePeriodSeconds" $ctx) }}.
*/}}
{{- define "sidepool.terminationGracePeriodSeconds" -}}
{{- $drain := add (include "sidepool.seconds" .Values.config.drain.delay) (include "sidepool.seconds" .Values.config.drain.timeout) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain .Values.terminationGraceMarginSeconds }}
{{- else if le (int64 .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.drain.delay + config.drain.timeout (%ds), or the kubelet kills sidepool mid-drain" (int64 .Values.terminationGracePeriodSeconds) $drain) }}
{{- else }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The sidepool.yaml that goes into the ConfigMap. It also refuses what would break the pod:
two routes with one name or port, and tlsSecrets mountPaths that overlap each other or
/etc/sidepool (here, because the ConfigMap is rendered in both modes).
*/}}
{{- define "sidepool.config" -}}
{{- $config := .Values.config }}
{{- $host := ternary "127.0.0.1" "0.0.0.0" (eq .Values.mode "sidecar") }}
{{- $names := dict "sidepool-admin" "the admin port's name" }}
{{- $ports := dict (toString $config.admin.port) "the admin port" }}
{{- if hasKey $ports (toString $config.admin.controlPort) }}
{{- fail (printf "config.admin.controlPort: %d is already the admin port" (int $config.admin.controlPort)) }}
{{- end }}
{{- $_ := set $ports (toString $config.admin.controlPort) "the admin control port" }}
{{- $mounts := dict "/etc/sidepool" "the config's mountPath" }}
{{- range $i, $secret := .Values.tlsSecrets }}
{{- $at := printf "tlsSecrets[%d].mountPath" $i }}
{{- $path := trimSuffix "/" $secret.mountPath }}
{{- range $other, $what := $mounts }}
{{- if or (eq $path $other) (hasPrefix (printf "%s/" $other) $path) (hasPrefix (printf "%s/" $path) $other) }}
{{- fail (printf "%s: %s overlaps %s (%s)" $at $secret.mountPath $other $what) }}
{{- end }}
{{- end }}
{{- $_ := set $mounts $path (printf "the mountPath of tlsSecrets[%d]" $i) }}
{{- end }}
{{- $routes := list }}
{{- range $i, $route := $config.routes }}
{{- $at := printf "config.routes[%d]" $i }}
{{- if hasKey $names $route.name }}
{{- fail (printf "%s.name: %q is already %s" $at $route.name (get $names $route.name)) }}
{{- end }}
{{- $_ := set $names $route.name (printf "the name of %s" $at) }}
{{- $port := toString $route.port }}
{{- if hasKey $ports $port }}
{{- fail (printf "%s.port: %s is already %s" $at $port (get $ports $port)) }}
{{- end }}
{{- $_ := set $ports $port (printf "the port of %s" $at) }}
{{- $out := omit $route "port" "pool" }}
{{- $_ := set $out "listen" (printf "%s:%d" $host (int $route.port)) }}
{{- $pool := mergeOverwrite (deepCopy ($config.pool | default dict)) ($route.pool | default dict) }}
{{- if $pool }}{{ $_ := set $out "pool" $pool }}{{ end }}
{{- $routes = append $routes $out }}
{{- end }}
{{- $admin := dict "listen" (printf "0.0.0.0:%d" (int $config.admin.port)) "controlListen" (printf "127.0.0.1:%d" (int $config.admin.controlPort)) }}
{{- $file := dict "admin" $admin "log" $config.log "drain" $config.drain "routes" $routes }}
{{- if $config.workers }}{{ $_ := set $file "workers" (int $config.workers) }}{{ end }}
{{- if $config.workerSockets }}{{ $_ := set $file "workerSockets" $config.workerSockets }}{{ end }}
{{- toYaml $file }}
{{- end }}

{{/* A route's upstream, for NOTES.txt: its address(es) or DNS name, and whether TLS. */}}
{{- define "sidepool.upstreamText" -}}
{{- if kindIs "string" . }}{{ . }}
{{- else }}
{{- if .dns }}{{ .dns }} (DNS){{ else if .address }}{{ .address }}{{ else }}{{ join ", " .addresses }}{{ end }}
{{- if .tls }} (TLS){{ end }}
{{- end }}
{{- end }}

{{/* Pod annotations: the config checksum (rolls the pods on change) and scraping. */}}
{{- define "sidepool.podAnnotations" -}}
checksum/sidepool-config: {{ include "sidepool.config" . | sha256sum }}
{{- if .Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.config.admin.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The image's node binary (deploy/Dockerfile's ENTRYPOINT), for commands run in it. */}}
{{- define "sidepool.node" -}}
/nodejs/bin/node
{{- end }}

{{/* The sidepool container, as a list item, for either mode. */}}
{{- define "sidepool.container" -}}
{{- $sidecar := eq .Values.mode "sidecar" -}}
- name: sidepool
  image: {{ include "sidepool.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and $sidecar .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  {{- with .Values.nodeFlags }}
  # The image's entrypoint (deploy/Dockerfile) with V8 flags that NODE_OPTIONS refuses.
  command:
    - {{ include "sidepool.node" $ }}
    {{- range . }}
    - {{ . | quote }}
    {{- end }}
    - /app/dist/cli.js
  {{- end }}
  args: ["run", "--config", "/etc/sidepool/sidepool.yaml"]
  {{- if or .Values.nodeOptions .Values.extraEnv }}
  env:
    {{- if .Values.nodeOptions }}
    - name: NODE_OPTIONS
      value: {{ .Values.nodeOptions | quote }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  ports:
    - name: sidepool-admin
      containerPort: {{ .Values.config.admin.port }}
      protocol: TCP
    {{- if not $sidecar }}
    {{- range .Values.config.routes }}
    - name: {{ .name }}
      containerPort: {{ .port }}
      protocol: TCP
    {{- end }}
    {{- end }}
  startupProbe:
    httpGet:
      path: /readyz
      port: sidepool-admin
    {{- toYaml .Values.probes.startup | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: sidepool-admin
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: sidepool-admin
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  {{- if and $sidecar (not .Values.sidecar.native) }}
  # A classic sidecar: the kubelet starts the next container (the app) only when this
  # hook has finished, i.e. once /readyz answers 200 (the image has no shell or curl).
  lifecycle:
    postStart:
      exec:
        command:
          - {{ include "sidepool.node" . }}
          - -e
          - >-
            const http = require('node:http'), end = Date.now() + 60000;
            function retry() { if (Date.now() > end) process.exit(1); setTimeout(poll, 250); }
            function poll() { http.get('http://127.0.0.1:{{ .Values.config.admin.port }}/readyz', (res) => { res.resume();
            if (res.statusCode === 200) process.exit(0); retry(); }).on('error', retry); }
            poll();
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: sidepool-config
      mountPath: /etc/sidepool
      readOnly: true
    {{- range $i, $secret := .Values.tlsSecrets }}
    - name: sidepool-tls-{{ $i }}
      mountPath: {{ $secret.mountPath | quote }}
      readOnly: true
    {{- end }}
{{- end }}

{{- define "sidepool.volumes" -}}
- name: sidepool-config
  configMap:
    name: {{ include "sidepool.fullname" . }}
{{- range $i, $secret := .Values.tlsSecrets }}
- name: sidepool-tls-{{ $i }}
  secret:
    secretName: {{ $secret.name | quote }}
{{- end }}
{{- end }}

{{- define "sidepool.requireSidecarMode" -}}
{{- if ne .Values.mode "sidecar" }}
{{- fail "the sidepool.sidecar templates need mode: sidecar in sidepool's values (otherwise the chart also installs a standalone pool, and routes listen on 0.0.0.0)" }}
{{- end }}
{{- end }}

{{/*
The templates another chart includes to add sidepool as a sidecar to its own pods (see
README.md). Each takes (dict "Values" .Values.sidepool "Release" .Release).

sidepool.sidecar: the container, a list item. With sidecar.native (the default) it goes
under initContainers (restartPolicy: Always); otherwise first under containers.
*/}}
{{- define "sidepool.sidecar" -}}
{{- include "sidepool.requireSidecarMode" . -}}
{{- include "sidepool.container" . }}
{{- end }}

{{/* sidepool.sidecar.volumes: the config volume, a list item under volumes. */}}
{{- define "sidepool.sidecar.volumes" -}}
{{- include "sidepool.requireSidecarMode" . -}}
{{- include "sidepool.volumes" . }}
{{- end }}

{{/* sidepool.sidecar.podAnnotations: under the pod template's annotations. */}}
{{- define "sidepool.sidecar.podAnnotations" -}}
{{- include "sidepool.requireSidecarMode" . -}}
{{- include "sidepool.podAnnotations" . }}
{{- end }}

{{/* sidepool.sidecar.podLabels: under the pod template's labels; the PodMonitor selects them. */}}
{{- define "sidepool.sidecar.podLabels" -}}
{{- include "sidepool.requireSidecarMode" . -}}
sidepool-sidecar: {{ include "sidepool.fullname" . }}
{{- end }}
