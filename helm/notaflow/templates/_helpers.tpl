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
  "NOTAFLOW_INGRESS_KEEP_ALIVE_TIMEOUT" (toString $c.keepAliveTimeout)
  "NOTAFLOW_FOCUS_BASE_URL" $c.focus.baseUrl
  "NOTAFLOW_FOCUS_TIMEOUT" (toString $c.focus.timeout)
  "NOTAFLOW_FOCUS_WEBHOOK_HEADER" $c.focus.webhookHeader
  "NOTAFLOW_CONSUMER_RETRY_BASE" (toString $c.consumer.retryBase)
  "NOTAFLOW_CONSUMER_RETRY_MAX" (toString $c.consumer.retryMax)
  "NOTAFLOW_CONSUMER_MAX_ATTEMPTS" (toString $c.consumer.maxAttempts)
  "NOTAFLOW_CONSUMER_FETCH_WAIT_MS" (toString $c.consumer.fetchWaitMs)
  "NOTAFLOW_LOG_LEVEL" $c.logLevel
  "NOTAFLOW_LOG_FORMAT" $c.logFormat
  "NOTAFLOW_KAFKA_GROUP_PREFIX" $c.kafka.groupPrefix
  "NOTAFLOW_KAFKA_SASL_KERBEROS_SERVICE_NAME" $c.kafka.saslKerberosServiceName
  "NOTAFLOW_KAFKA_SSL_CHECK_HOSTNAME" (toString $c.kafka.tls.checkHostname)
  "NOTAFLOW_DATABASE_POOL_SIZE" (toString $c.database.poolSize)
  "NOTAFLOW_DATABASE_MAX_OVERFLOW" (toString $c.database.maxOverflow)
  "NOTAFLOW_DATABASE_POOL_TIMEOUT" (toString $c.database.poolTimeout)
  "NOTAFLOW_DATABASE_PGBOUNCER" (toString $c.database.pgbouncer)
}}
{{- with $c.kafka.tls.caSecret }}
{{- $_ := set $data "NOTAFLOW_KAFKA_SSL_CAFILE" (printf "/etc/notaflow/kafka-ca/%s" $c.kafka.tls.caKey) }}
{{- end }}
{{- with $c.kafka.tls.clientSecret }}
{{- $_ := set $data "NOTAFLOW_KAFKA_SSL_CERTFILE" (printf "/etc/notaflow/kafka-client/%s" $c.kafka.tls.certKey) }}
{{- $_ := set $data "NOTAFLOW_KAFKA_SSL_KEYFILE" (printf "/etc/notaflow/kafka-client/%s" $c.kafka.tls.keyKey) }}
{{- end }}
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
Call with (dict "root" $ "component" "x" "secretName" "..." "deployment" true); the Secret is
mounted as files when secrets.asFiles. Deployments get the scheduling
presets (anti-affinity, zone spread), scoped to their own release and component.
*/}}
{{- define "notaflow.podCommon" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
{{- /* A Service named like a setting (e.g. <release>-emites) would inject
NOTAFLOW_EMITES_PORT=tcp://... into every pod: service discovery goes through DNS here. */}}
enableServiceLinks: false
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $selector := include "notaflow.selectorLabels" (dict "root" $root "component" .component) | fromYaml }}
{{- if $v.affinity }}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if and .deployment $v.podAntiAffinityPreset }}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" $selector) }}
affinity:
  podAntiAffinity:
    {{- if eq $v.podAntiAffinityPreset "hard" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      {{- toYaml (list $term) | nindent 6 }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          {{- toYaml $term | nindent 10 }}
    {{- end }}
{{- end }}
{{- if .deployment }}
{{- if .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml .topologySpreadConstraints | nindent 2 }}
{{- else if $v.topologySpreadPreset }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: {{ ternary "DoNotSchedule" "ScheduleAnyway" (eq $v.topologySpreadPreset "hard") }}
    labelSelector:
      matchLabels:
        {{- toYaml $selector | nindent 8 }}
{{- end }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.initContainers }}
initContainers:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      {{- with $v.tmpVolume.medium }}
      medium: {{ . }}
      {{- end }}
      sizeLimit: {{ $v.tmpVolume.sizeLimit }}
  {{- if and $v.secrets.asFiles .secretName }}
  - name: secrets
    secret:
      secretName: {{ .secretName }}
      defaultMode: 0440
  {{- end }}
  {{- with $v.config.kafka.tls.caSecret }}
  - name: kafka-ca
    secret:
      secretName: {{ . }}
      items:
        - key: {{ $v.config.kafka.tls.caKey }}
          path: {{ $v.config.kafka.tls.caKey }}
  {{- end }}
  {{- with $v.config.kafka.tls.clientSecret }}
  - name: kafka-client
    secret:
      secretName: {{ . }}
      items:
        - key: {{ $v.config.kafka.tls.certKey }}
          path: {{ $v.config.kafka.tls.certKey }}
        - key: {{ $v.config.kafka.tls.keyKey }}
          path: {{ $v.config.kafka.tls.keyKey }}
  {{- end }}
  {{- with $v.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
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
  {{- if not $root.Values.secrets.asFiles }}
  - secretRef:
      name: {{ .secretName }}
  {{- end }}
  {{- with $root.Values.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- $secretsDir := list }}
{{- if $root.Values.secrets.asFiles }}
{{- $secretsDir = list (dict "name" "NOTAFLOW_SECRETS_DIR" "value" "/etc/notaflow/secrets") }}
{{- end }}
{{- $env := concat $secretsDir (.env | default list) ($root.Values.extraEnv | default list) (.extraEnv | default list) }}
{{- with $env }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- if $root.Values.secrets.asFiles }}
  - name: secrets
    mountPath: /etc/notaflow/secrets
    readOnly: true
  {{- end }}
  {{- if $root.Values.config.kafka.tls.caSecret }}
  - name: kafka-ca
    mountPath: /etc/notaflow/kafka-ca
    readOnly: true
  {{- end }}
  {{- if $root.Values.config.kafka.tls.clientSecret }}
  - name: kafka-client
    mountPath: /etc/notaflow/kafka-client
    readOnly: true
  {{- end }}
  {{- with $root.Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
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
