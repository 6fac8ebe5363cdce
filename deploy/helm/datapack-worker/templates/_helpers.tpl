{{/* Names, labels and shared snippets of the datapack-worker chart. */}}

{{- define "datapack-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "datapack-worker.fullname" -}}
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

{{- define "datapack-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "datapack-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The worker pods only (not the migration Job's): what the Service, PDB and NetworkPolicy select. */}}
{{- define "datapack-worker.workerSelectorLabels" -}}
{{ include "datapack-worker.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "datapack-worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "datapack-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: datapack
{{- end }}

{{- define "datapack-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "datapack-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given (a digest pins the bytes). */}}
{{- define "datapack-worker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{- define "datapack-worker.secretName" -}}
{{- default (include "datapack-worker.fullname" .) .Values.database.existingSecret }}
{{- end }}

{{- define "datapack-worker.migrationSecretKey" -}}
{{- default .Values.database.secretKey .Values.database.migrationSecretKey }}
{{- end }}

{{/* Messages per replica for KEDA: explicit, or what one replica clears in the drain target:
  ceil(messagesPerSecondPerReplica × drainSeconds). */}}
{{- define "datapack-worker.queueLength" -}}
{{- if gt (int .Values.keda.queueLength) 0 }}{{ .Values.keda.queueLength }}
{{- else }}{{ mulf .Values.keda.messagesPerSecondPerReplica .Values.keda.drainSeconds | ceil | int }}
{{- end }}
{{- end }}

{{/* The most worker replicas that can run outside a rollout: KEDA's ceiling, or the fixed count. */}}
{{- define "datapack-worker.replicaCeiling" -}}
{{- if .Values.keda.enabled }}{{ .Values.keda.maxReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* rollingUpdate.maxSurge as pods: a percentage of the ceiling rounded up, as Kubernetes does. */}}
{{- define "datapack-worker.surgePods" -}}
{{- $surge := toString .Values.rollingUpdate.maxSurge }}
{{- $ceiling := include "datapack-worker.replicaCeiling" . | int }}
{{- if hasSuffix "%" $surge }}
{{- divf (mulf $ceiling (trimSuffix "%" $surge | float64)) 100 | ceil | int }}
{{- else }}{{ $surge | int }}
{{- end }}
{{- end }}

{{/* The worst case of database connections this release opens at once, as
  "total|replicas|surge|perReplica|reconcile|migration". */}}
{{- define "datapack-worker.connectionWorstCase" -}}
{{- $replicas := include "datapack-worker.replicaCeiling" . | int }}
{{- $surge := include "datapack-worker.surgePods" . | int }}
{{- $per := int .Values.database.maxConnections }}
{{- $reconcile := ternary (int .Values.reconcile.maxConnections) 0 .Values.reconcile.enabled }}
{{- $migration := ternary 1 0 .Values.migration.enabled }}
{{- $total := add (mul (add $replicas $surge) $per) $reconcile $migration }}
{{- printf "%d|%d|%d|%d|%d|%d" $total $replicas $surge $per $reconcile $migration }}
{{- end }}

{{/* Refuses values whose fleet could not run; the Deployment (always rendered) includes it. */}}
{{- define "datapack-worker.validate" -}}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) }}
{{- fail "database: set existingSecret (a Secret holding the URLs) or url (the chart creates the Secret)" }}
{{- end }}
{{- if gt (int .Values.keda.minReplicas) (int .Values.keda.maxReplicas) }}
{{- fail (printf "keda.minReplicas (%v) is greater than keda.maxReplicas (%v)" .Values.keda.minReplicas .Values.keda.maxReplicas) }}
{{- end }}
{{- $w := splitList "|" (include "datapack-worker.connectionWorstCase" .) }}
{{- if gt (index $w 0 | int) (int .Values.database.connectionBudget) }}
{{- fail (printf "database connections: the worst case is %s = (%s replicas + %s surge) x %s (database.maxConnections) + %s (reconcile) + %s (migration), above database.connectionBudget %v; lower keda.maxReplicas, rollingUpdate.maxSurge or database.maxConnections, or raise the budget once max_connections allows it (docs/fleet-sizing.md)" (index $w 0) (index $w 1) (index $w 2) (index $w 3) (index $w 4) (index $w 5) .Values.database.connectionBudget) }}
{{- end }}
{{- if and .Values.database.iamAuth .Values.database.passwordFile.secretName }}
{{- fail "database: iamAuth and passwordFile.secretName exclude each other (IAM authentication uses a token, not a password)" }}
{{- end }}
{{- if and .Values.migration.enabled .Values.migration.grants.enabled .Values.database.iamAuth }}
{{- fail "migration.grants: psql cannot sign in with database.iamAuth; set migration.grants.enabled=false and apply deploy/sql/grants.sql from your pipeline after each upgrade" }}
{{- end }}
{{- end }}

{{/* The database settings of every pod that runs the worker binary against the worker role. */}}
{{- define "datapack-worker.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "datapack-worker.secretName" . }}
      key: {{ .Values.database.secretKey }}
{{- if .Values.database.passwordFile.secretName }}
- {name: DATABASE_PASSWORD_FILE, value: {{ printf "/var/run/secrets/datapack-worker/database/%s" .Values.database.passwordFile.key | quote }}}
{{- end }}
{{- if .Values.database.iamAuth }}
- {name: DATABASE_IAM_AUTH, value: "true"}
{{- end }}
{{- if not (kindIs "invalid" .Values.database.idleTimeoutSecs) }}
- {name: DATABASE_IDLE_TIMEOUT_SECS, value: {{ .Values.database.idleTimeoutSecs | quote }}}
{{- end }}
{{- end }}

{{/* The volumes those pods mount: the password file, the CA bundle, extraVolumes. */}}
{{- define "datapack-worker.volumes" -}}
{{- if .Values.database.passwordFile.secretName }}
- name: database-password
  secret:
    secretName: {{ .Values.database.passwordFile.secretName }}
    items: [{key: {{ .Values.database.passwordFile.key }}, path: {{ .Values.database.passwordFile.key }}}]
    defaultMode: 0440
{{- end }}
{{- if .Values.database.caBundle.configMap }}
- name: database-ca
  configMap:
    name: {{ .Values.database.caBundle.configMap }}
    items: [{key: {{ .Values.database.caBundle.key }}, path: {{ .Values.database.caBundle.key }}}]
{{- end }}
{{- with .Values.worker.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "datapack-worker.volumeMounts" -}}
{{- if .Values.database.passwordFile.secretName }}
- {name: database-password, mountPath: /var/run/secrets/datapack-worker/database, readOnly: true}
{{- end }}
{{- if .Values.database.caBundle.configMap }}
- {name: database-ca, mountPath: /etc/datapack-worker/tls, readOnly: true}
{{- end }}
{{- with .Values.worker.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The environment the worker binary reads, shared by the Deployment and the reconcile CronJob. */}}
{{- define "datapack-worker.commonEnv" -}}
- {name: LOG_FORMAT, value: {{ .Values.worker.logFormat | quote }}}
- {name: RUST_LOG, value: {{ .Values.worker.logFilter | quote }}}
- {name: AWS_REGION, value: {{ .Values.aws.region | quote }}}
- {name: S3_BUCKET, value: {{ .Values.s3.buckets | quote }}}
- {name: SQS_QUEUE_URL, value: {{ .Values.sqs.queueUrl | quote }}}
- {name: SQS_DEAD_LETTER_QUEUE_URL, value: {{ .Values.sqs.deadLetterQueueUrl | quote }}}
{{- range $name, $value := .Values.worker.extraEnv }}
- {name: {{ $name }}, value: {{ $value | quote }}}
{{- end }}
{{ include "datapack-worker.databaseEnv" . }}
{{- end }}

{{/* checkov waivers that hold for every pod of this chart, with their reasons. */}}
{{- define "datapack-worker.checkovPodWaivers" -}}
checkov.io/skip1: CKV_K8S_35=The worker reads DATABASE_URL from its environment only; the value comes from a Secret, never from the manifest
{{- if not .Values.image.digest }}
checkov.io/skip2: CKV_K8S_43=The tag is pinned to a release; set image.digest to pin the bytes as well
checkov.io/skip3: CKV_K8S_15=A pinned release tag is never rebuilt, so IfNotPresent is safe and spares a registry round trip on every scale-out; set image.digest or pullPolicy Always to change it
{{- end }}
{{- end }}

{{/* Egress to the EKS Pod Identity agent, a link-local address on every node (IPv4 and IPv6). */}}
{{- define "datapack-worker.podIdentityAgentEgress" -}}
- to:
    - ipBlock: {cidr: 169.254.170.23/32}
    - ipBlock: {cidr: "fd00:ec2::23/128"}
  ports:
    - {port: 80, protocol: TCP}
{{- end }}

{{- define "datapack-worker.reconcileServiceAccountName" -}}
{{- if .Values.reconcile.serviceAccount.create }}
{{- default (printf "%s-reconcile" (include "datapack-worker.fullname" .)) .Values.reconcile.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.reconcile.serviceAccount.name }}
{{- end }}
{{- end }}
