{{/* Names and labels. */}}
{{- define "smartbox.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "smartbox.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "smartbox.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "smartbox.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Validate a trust code: the key under `trusts:` is the trust file's name and code. */}}
{{- define "smartbox.trustCode" -}}
{{- if not (regexMatch "^[A-Z0-9]{2,8}$" .) -}}
{{- fail (printf "trusts.%s: a trust code is 2-8 upper-case letters or digits" .) -}}
{{- end -}}
{{- . -}}
{{- end -}}

{{/* Environment shared by every smartbox container: settings, secrets, key file. */}}
{{- define "smartbox.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "smartbox.fullname" .root }}-settings
  - secretRef:
      name: {{ .root.Values.secrets.envSecret }}
env:
  - name: SMARTBOX_METRICS_PORT
    value: {{ .metricsPort | quote }}
{{- end -}}

{{/* Volumes every smartbox pod mounts: trust files, the key, a writable /tmp. */}}
{{- define "smartbox.volumes" -}}
- name: trusts
  configMap:
    name: {{ include "smartbox.fullname" . }}-trusts
- name: pseudonym-key
  secret:
    secretName: {{ .Values.secrets.pseudonymKey.secretName }}
    defaultMode: 0400
    items:
      - key: {{ .Values.secrets.pseudonymKey.key }}
        path: pseudonym.key
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "smartbox.volumeMounts" -}}
- name: trusts
  mountPath: /etc/smartbox/trusts
  readOnly: true
- name: pseudonym-key
  mountPath: /run/secrets/smartbox
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* /healthz (alive) and /readyz (dependencies reachable) on the metrics port. */}}
{{- define "smartbox.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  {{- toYaml .Values.probes.readiness | nindent 2 }}
{{- end -}}

{{- define "smartbox.podSpecCommon" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "smartbox.podAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .metricsPort | quote }}
prometheus.io/path: /metrics
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A trust file as TOML: keys with plain values first, then tables ([deidentification],
     [tls]); lists of tables (mask_rules) and nested tables are written inline. Strings are
     written as JSON strings, which TOML reads the same. */}}
{{- define "smartbox.tomlValue" -}}
{{- if kindIs "map" . -}}
{ {{- $first := true -}}
{{- range $k, $v := . -}}
{{- if not $first }}, {{ end -}}
{{- $first = false -}}
{{ $k }} = {{ include "smartbox.tomlValue" $v }}
{{- end -}} }
{{- else if kindIs "slice" . -}}
[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "smartbox.tomlValue" $v }}{{ end }}]
{{- else -}}
{{ toJson . }}
{{- end -}}
{{- end -}}

{{- define "smartbox.trustToml" -}}
code = {{ .code | toJson }}
{{- range $key, $value := .file }}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ include "smartbox.tomlValue" $value }}
{{- end }}
{{- end }}
{{- range $key, $value := .file }}
{{- if kindIs "map" $value }}

[{{ $key }}]
{{- range $k, $v := $value }}
{{ $k }} = {{ include "smartbox.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
