{{/* Names, labels and the rendered config, shared by every template. */}}

{{- define "zgw-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zgw-gateway.fullname" -}}
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

{{- define "zgw-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "zgw-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zgw-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "zgw-gateway.labels" -}}
helm.sh/chart: {{ include "zgw-gateway.chart" . }}
{{ include "zgw-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: zgw-gateway
{{- end }}

{{- define "zgw-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zgw-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "zgw-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret mounted under secret.mountPath: the operator's, or the one this chart creates. */}}
{{- define "zgw-gateway.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if .Values.secret.values }}
{{- include "zgw-gateway.fullname" . }}
{{- end }}
{{- end }}

{{/*
The config.yaml the pods read: values.config with listen/admin taken from .Values.ports, so the
config, the container ports, the probes and the Service cannot disagree.
*/}}
{{- define "zgw-gateway.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $listen := merge (dict "host" "0.0.0.0" "port" (int .Values.ports.proxy)) (omit (default (dict) $config.listen) "host" "port") }}
{{- $admin := dict "host" "0.0.0.0" "port" (int .Values.ports.admin) }}
{{- $_ := set $config "listen" $listen }}
{{- $_ = set $config "admin" $admin }}
{{- toYaml $config }}
{{- end }}

{{/* Refuse a shutdown budget that the kubelet would cut short with SIGKILL. */}}
{{- define "zgw-gateway.validateShutdown" -}}
{{- $shutdown := default (dict) .Values.config.shutdown }}
{{- $drain := 5.0 }}
{{- if hasKey $shutdown "drain_seconds" }}{{ $drain = float64 $shutdown.drain_seconds }}{{ end }}
{{- $finish := 30.0 }}
{{- if hasKey $shutdown "timeout_seconds" }}{{ $finish = float64 $shutdown.timeout_seconds }}{{ end }}
{{- $budget := addf (float64 .Values.preStopSeconds) $drain $finish }}
{{- if ge $budget (float64 .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "preStopSeconds (%v) + config.shutdown.drain_seconds (%v) + config.shutdown.timeout_seconds (%v) must be below terminationGracePeriodSeconds (%v)" .Values.preStopSeconds $drain $finish .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- end }}
