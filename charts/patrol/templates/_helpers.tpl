{{/* Names. Cluster-scoped objects carry the full name, so two releases never collide. */}}
{{- define "patrol.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "patrol.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "patrol.operator.fullname" -}}{{ include "patrol.fullname" . }}-operator{{- end -}}
{{- define "patrol.webhook.fullname" -}}{{ include "patrol.fullname" . }}-webhook{{- end -}}

{{- define "patrol.operator.serviceAccountName" -}}
{{- default (include "patrol.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- define "patrol.webhook.serviceAccountName" -}}
{{- default (include "patrol.webhook.fullname" .) .Values.webhook.serviceAccount.name -}}
{{- end -}}

{{- define "patrol.leaseName" -}}
{{- default (include "patrol.operator.fullname" .) .Values.operator.leaderElection.leaseName -}}
{{- end -}}
{{- define "patrol.signingKeySecretName" -}}
{{- default (printf "%s-signing-keys" (include "patrol.fullname" .)) .Values.webhook.exchange.signingKeySecretName -}}
{{- end -}}
{{- define "patrol.ownerAttestationSecretName" -}}
{{- printf "%s-owner-attestation" (include "patrol.fullname" .) -}}
{{- end -}}
{{- define "patrol.issuer" -}}
{{- default (printf "https://%s.%s.svc" (include "patrol.webhook.fullname" .) .Release.Namespace) .Values.webhook.exchange.issuer -}}
{{- end -}}
{{- define "patrol.tokenWebhookURL" -}}
{{- default (printf "https://%s.%s.svc:%d/authenticate" (include "patrol.webhook.fullname" .) .Release.Namespace (int .Values.webhook.service.port)) .Values.apiserver.tokenWebhook.url -}}
{{- end -}}
{{- define "patrol.tlsSecretName" -}}{{ include "patrol.webhook.fullname" . }}-tls{{- end -}}
{{- define "patrol.caSecretName" -}}{{ include "patrol.webhook.fullname" . }}-ca{{- end -}}

{{/* The names and addresses the webhook's serving certificate must hold: the Service's
names, the hosts of the URLs the kube-apiserver is told to use (token webhook, issuer),
and tls.extraDNSNames / tls.extraIPAddresses. */}}
{{- define "patrol.webhook.sans" -}}
{{- $svc := include "patrol.webhook.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $ips := list -}}
{{- $urls := list (include "patrol.tokenWebhookURL" .) -}}
{{- if .Values.webhook.exchange.enabled }}{{ $urls = append $urls (include "patrol.issuer" .) }}{{ end -}}
{{- range $urls -}}
{{- $host := (urlParse .).hostname -}}
{{- if regexMatch "^[0-9.]+$|:" $host -}}
{{- $ips = append $ips $host -}}
{{- else if $host -}}
{{- $names = append $names $host -}}
{{- end -}}
{{- end -}}
{{- dict "dnsNames" (concat $names .Values.tls.extraDNSNames | uniq) "ipAddresses" (concat $ips .Values.tls.extraIPAddresses | uniq) | toJson -}}
{{- end -}}

{{/* Labels. */}}
{{- define "patrol.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "patrol.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: patrol
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "patrol.selectorLabels" -}}
app.kubernetes.io/name: {{ include "patrol.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "patrol.componentLabels" -}}
{{ include "patrol.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* image: repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "patrol.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The username a ServiceAccount authenticates as. */}}
{{- define "patrol.operator.username" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "patrol.operator.serviceAccountName" . }}
{{- end -}}
{{- define "patrol.webhook.username" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "patrol.webhook.serviceAccountName" . }}
{{- end -}}

{{/*
One scrape endpoint of a ServiceMonitor or PodMonitor: dict "root" . "cfg" (the monitor's
values) "port" (port name) "tls" (bool: the webhook's HTTPS port, verified against its CA).
*/}}
{{- define "patrol.scrapeEndpoint" -}}
- port: {{ .port }}
  path: /metrics
  interval: {{ .cfg.interval }}
  {{- with .cfg.scrapeTimeout }}
  scrapeTimeout: {{ . }}
  {{- end }}
  {{- if .tls }}
  scheme: https
  tlsConfig:
    serverName: {{ include "patrol.webhook.fullname" .root }}.{{ .root.Release.Namespace }}.svc
    ca:
      secret:
        name: {{ include "patrol.tlsSecretName" .root }}
        key: ca.crt
  {{- end }}
  {{- with .cfg.relabelings }}
  relabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .cfg.metricRelabelings }}
  metricRelabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Labels and annotations a monitoring object adds: dict "root" . "cfg" … "component" … */}}
{{- define "patrol.monitoringMetadata" -}}
labels:
  {{- include "patrol.componentLabels" (dict "root" .root "component" .component) | nindent 2 }}
  {{- with .cfg.labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .cfg.annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
