{{/* Name of the chart, overridable. */}}
{{- define "accordion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of every object: release-chart, unless the release name contains the chart's. */}}
{{- define "accordion.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "accordion.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "accordion.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: accordion
{{- end }}

{{- define "accordion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "accordion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "accordion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "accordion.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: [registry/]repository:tag (tag defaults to appVersion), or repository@digest
when a digest is set. imageRegistry replaces the repository's registry: its first path
component when that names a host (contains "." or ":", or is "localhost"), as Docker reads it.
Call with (list . .Values.x.image).
*/}}
{{- define "accordion.image" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- $repo := $image.repository }}
{{- with $root.Values.imageRegistry }}
{{- $parts := splitList "/" $repo }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- $repo = join "/" (rest $parts) }}
{{- end }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repo $image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The restricted container security context, shared with the data plane pods. */}}
{{- define "accordion.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "accordion.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The demand reader's credential files in the operator pod: a mounted Secret / ConfigMap (see
deployment.yaml) wins over a path given as is. Mounted as whole volumes, not subPath, so that
the kubelet's updates reach the files (the operator reads them again when they change).
*/}}
{{- define "accordion.prometheusTokenFile" -}}
{{- with .Values.prometheus.auth.bearerTokenSecret -}}
{{- if .name -}}/var/run/accordion/prometheus/token/{{ .key }}{{- end -}}
{{- end -}}
{{- if not .Values.prometheus.auth.bearerTokenSecret.name -}}{{ .Values.prometheus.auth.bearerTokenFile }}{{- end -}}
{{- end -}}

{{- define "accordion.prometheusCaFile" -}}
{{- with .Values.prometheus.tls.caConfigMap -}}
{{- if .name -}}/var/run/accordion/prometheus/ca/{{ .key }}{{- end -}}
{{- end -}}
{{- if not .Values.prometheus.tls.caConfigMap.name -}}{{ .Values.prometheus.tls.caFile }}{{- end -}}
{{- end -}}
