{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "notaflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart name.
Component resources append a suffix, so keep room for it.
*/}}
{{- define "notaflow.fullname" -}}
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

{{/*
Name of a component's resources: <fullname>-<component>. Call with (dict "root" $ "component" "x").
*/}}
{{- define "notaflow.componentName" -}}
{{- printf "%s-%s" (include "notaflow.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Chart label value.
*/}}
{{- define "notaflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels for every resource. Call with (dict "root" $ "component" "x"); component may be "".
*/}}
{{- define "notaflow.labels" -}}
helm.sh/chart: {{ include "notaflow.chart" .root }}
{{ include "notaflow.selectorLabels" . }}
{{- with .root.Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: notaflow
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: name, instance and component, so each Deployment selects only its own pods.
*/}}
{{- define "notaflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "notaflow.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
ServiceAccount the long-running pods use.
*/}}
{{- define "notaflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "notaflow.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is set, else repository:tag (tag defaults to
the chart's appVersion).
*/}}
{{- define "notaflow.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the pods read: the existing one, or the one this chart renders.
*/}}
{{- define "notaflow.secretName" -}}
{{- default (include "notaflow.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Public URL of the ingress: config.publicUrl, else the first Ingress host, else the Service.
*/}}
{{- define "notaflow.publicUrl" -}}
{{- $ing := .Values.ingress.kubernetesIngress }}
{{- if .Values.config.publicUrl }}
{{- .Values.config.publicUrl }}
{{- else if and $ing.enabled $ing.hosts }}
{{- $host := (first $ing.hosts).host }}
{{- $tls := false }}
{{- range $ing.tls }}{{ if has $host .hosts }}{{ $tls = true }}{{ end }}{{ end }}
{{- printf "%s://%s" (ternary "https" "http" $tls) $host }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "notaflow.componentName" (dict "root" . "component" "ingress")) .Release.Namespace .Values.ingress.service.port }}
{{- end }}
{{- end }}

{{/*
Non-secret NOTAFLOW_* settings (the ConfigMap's data). Shared by the ConfigMap, its migrate-hook
twin and the checksum.
*/}}
{{- define "notaflow.configData" -}}
{{- $c := .Values.config }}
{{- $data := dict
  "NOTAFLOW_KAFKA_BOOTSTRAP" $c.kafka.bootstrap
  "NOTAFLOW_KAFKA_TOPIC_PREFIX" $c.kafka.topicPrefix
  "NOTAFLOW_KAFKA_PARTITIONS" (toString $c.kafka.partitions)
  "NOTAFLOW_KAFKA_REPLICATION" (toString $c.kafka.replication)
  "NOTAFLOW_KAFKA_IDEMPOTENCE" (toString $c.kafka.idempotence)
  "NOTAFLOW_KAFKA_SECURITY_PROTOCOL" $c.kafka.securityProtocol
  "NOTAFLOW_KAFKA_SASL_MECHANISM" $c.kafka.saslMechanism
  "NOTAFLOW_KAFKA_SASL_USERNAME" $c.kafka.saslUsername
  "NOTAFLOW_PUBLIC_URL" (include "notaflow.publicUrl" .)
  "NOTAFLOW_MAX_BODY_BYTES" (toString (int64 $c.maxBodyBytes))
  "NOTAFLOW_FOCUS_BASE_URL" $c.focus.baseUrl
  "NOTAFLOW_FOCUS_TIMEOUT" (toString $c.focus.timeout)
  "NOTAFLOW_FOCUS_WEBHOOK_HEADER" $c.focus.webhookHeader
  "NOTAFLOW_CONSUMER_RETRY_BASE" (toString $c.consumer.retryBase)
  "NOTAFLOW_CONSUMER_RETRY_MAX" (toString $c.consumer.retryMax)
  "NOTAFLOW_CONSUMER_MAX_ATTEMPTS" (toString $c.consumer.maxAttempts)
  "NOTAFLOW_LOG_LEVEL" $c.logLevel
}}
{{- range $k, $v := $c.extra }}
{{- $_ := set $data (printf "NOTAFLOW_%s" $k) (toString $v) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{/*
Secret NOTAFLOW_* settings (the Secret's stringData); empty values are left out so the
processes keep their defaults.
*/}}
{{- define "notaflow.secretData" -}}
{{- $s := .Values.secrets }}
{{- $data := dict }}
{{- $known := dict
  "NOTAFLOW_DATABASE_URL" $s.databaseUrl
  "NOTAFLOW_KAFKA_SASL_PASSWORD" $s.kafkaSaslPassword
  "NOTAFLOW_FOCUS_TOKEN" $s.focusToken
  "NOTAFLOW_FOCUS_WEBHOOK_SECRET" $s.focusWebhookSecret
}}
{{- range $k, $v := $known }}
{{- if $v }}{{ $_ := set $data $k $v }}{{ end }}
{{- end }}
{{- range $k, $v := $s.extra }}
{{- $_ := set $data (printf "NOTAFLOW_%s" $k) (toString $v) }}
{{- end }}
{{- if $data }}
{{- toYaml $data }}
{{- else -}}
{}
{{- end }}
{{- end }}

{{/*
checksum/config: hash of the rendered ConfigMap and Secret, so pods roll when either changes.
*/}}
{{- define "notaflow.configChecksum" -}}
{{- print (include (print .Template.BasePath "/configmap.yaml") .) (include (print .Template.BasePath "/secret.yaml") .) | sha256sum }}
{{- end }}

{{/*
Pod-level fields every notaflow pod shares (below `spec:` of a pod template).
*/}}
{{- define "notaflow.podCommon" -}}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      {{- with .Values.tmpVolume.medium }}
      medium: {{ . }}
      {{- end }}
      sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- end }}

{{/*
Container fields every notaflow container shares: image, security, configuration, /tmp.
Call with (dict "root" $ "configName" "..." "extraEnv" list).
*/}}
{{- define "notaflow.containerCommon" -}}
{{- $root := .root -}}
image: {{ include "notaflow.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
{{- with $root.Values.securityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
envFrom:
  - configMapRef:
      name: {{ .configName }}
  - secretRef:
      name: {{ .secretName }}
  {{- with $root.Values.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- $env := concat (.env | default list) ($root.Values.extraEnv | default list) (.extraEnv | default list) }}
{{- with $env }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end }}

{{/*
Deep merge: `over` on top of `base`; maps merge key by key, anything else replaces, and a null
removes the key (as in Helm's own values coalescing). Sprig's mergeOverwrite is not used because
it ignores false and 0 (`keda.enabled: false` or `minReplicaCount: 0` would be lost).
Call with (dict "base" map "over" map); returns YAML (use fromYaml).
*/}}
{{- define "notaflow.merge" -}}
{{- $out := deepCopy (.base | default dict) }}
{{- range $k, $v := (.over | default dict) }}
{{- if kindIs "invalid" $v }}
{{- $_ := unset $out $k }}
{{- else if and (kindIs "map" $v) (kindIs "map" (get $out $k)) }}
{{- $_ := set $out $k (fromYaml (include "notaflow.merge" (dict "base" (get $out $k) "over" $v))) }}
{{- else }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Settings of one consumer: consumerDefaults with its `consumers` entry on top.
Call with (dict "root" $ "entry" $entry); returns YAML (use fromYaml).
*/}}
{{- define "notaflow.consumer" -}}
{{- include "notaflow.merge" (dict "base" .root.Values.consumerDefaults "over" .entry) }}
{{- end }}
