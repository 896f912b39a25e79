{{/* Standard names and labels, as `helm create` and the cert-manager/KubeRay charts make them. */}}

{{- define "bndl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bndl.fullname" -}}
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

{{- define "bndl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bndl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bndl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "bndl.labels" -}}
helm.sh/chart: {{ include "bndl.chart" . }}
{{ include "bndl.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bndl
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "bndl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bndl.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to the appVersion. */}}
{{- define "bndl.imageRef" -}}
{{- $img := index . 0 }}{{- $root := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "bndl.operatorImage" -}}
{{- include "bndl.imageRef" (list .Values.image .) }}
{{- end }}

{{- define "bndl.workerImage" -}}
{{- include "bndl.imageRef" (list .Values.worker.image .) }}
{{- end }}

{{/*
Value combinations the schema cannot express. Each failure names the values to change, so a bad
`helm install` stops before anything is created.
*/}}
{{- define "bndl.validate" -}}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "serviceAccount.name is required when serviceAccount.create is false: name the existing ServiceAccount the operator runs as" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled requires metrics.enabled=true: the ServiceMonitor scrapes the metrics Service" }}
{{- end }}
{{- if and .Values.metrics.podMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.podMonitor.enabled requires metrics.enabled=true: without it workers serve no metrics" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.operator.healthPort)) }}
{{- fail (printf "metrics.port and operator.healthPort must differ (both are %v)" .Values.metrics.port) }}
{{- end }}
{{- if ne (len .Values.watch.namespaces) (len (uniq .Values.watch.namespaces)) }}
{{- fail (printf "watch.namespaces lists a namespace twice: %v" .Values.watch.namespaces) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 requires leaderElection.enabled=true: replicas without a leader would run the same jobs twice" }}
{{- end }}
{{- if ge (int .Values.leaderElection.renewDeadlineSeconds) (int .Values.leaderElection.leaseDurationSeconds) }}
{{- fail "leaderElection.renewDeadlineSeconds must be shorter than leaderElection.leaseDurationSeconds" }}
{{- end }}
{{- $psc := .Values.podSecurityContext }}
{{- if or (eq (toString $psc.runAsNonRoot) "false") (eq (toString $psc.runAsUser) "0") }}
{{- fail "podSecurityContext: the operator never runs as root (runAsNonRoot must stay true and runAsUser must not be 0)" }}
{{- end }}
{{- $sc := .Values.securityContext }}
{{- if or (eq (toString $sc.allowPrivilegeEscalation) "true") (eq (toString $sc.privileged) "true") }}
{{- fail "securityContext: privileged mode and privilege escalation are refused; the operator needs neither" }}
{{- end }}
{{- end }}
