{{/* Names, labels, ports and the pod pieces every component shares. */}}

{{- define "openledger.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "openledger.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "openledger.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "openledger.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>: takes (dict "root" $ "component" "ledger"). */}}
{{- define "openledger.componentName" -}}
{{- printf "%s-%s" (include "openledger.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "openledger.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openledger.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of every object: takes (dict "root" $ "component" "ledger"). */}}
{{- define "openledger.labels" -}}
{{ include "openledger.selectorLabels" . }}
app.kubernetes.io/part-of: openledger
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The five services in the binary's port order (service i: grpcBase + i, opsBase + i). */}}
{{- define "openledger.serviceOrder" -}}
ledger datanet-ingest attribution-worker model-factory inference-gateway
{{- end -}}

{{- define "openledger.serviceIndex" -}}
{{- $index := 0 -}}
{{- range $i, $name := splitList " " (include "openledger.serviceOrder" .root) -}}
{{- if eq $name $.service }}{{ $index = $i }}{{ end -}}
{{- end -}}
{{- $index -}}
{{- end -}}

{{/* gRPC port of a service: (dict "root" $ "service" "ledger"). */}}
{{- define "openledger.grpcPort" -}}
{{- add .root.Values.ports.grpcBase (include "openledger.serviceIndex" .) -}}
{{- end -}}

{{/* Ops HTTP port of a service; the gateway serves its ops routes on the REST port. */}}
{{- define "openledger.opsPort" -}}
{{- if eq .service "inference-gateway" -}}
{{- .root.Values.ports.http -}}
{{- else -}}
{{- add .root.Values.ports.opsBase (include "openledger.serviceIndex" .) -}}
{{- end -}}
{{- end -}}

{{/* http://<service>:<grpc port>, the address other pods call a service's gRPC API at. */}}
{{- define "openledger.serviceUrl" -}}
{{- printf "http://%s:%s" (include "openledger.componentName" (dict "root" .root "component" .service)) (include "openledger.grpcPort" .) -}}
{{- end -}}

{{/* repository:tag of a component, its own image when set: (dict "root" $ "image" .Values.engine.image). */}}
{{- define "openledger.image" -}}
{{- $image := default (dict) .image -}}
{{- $repository := default .root.Values.image.repository $image.repository -}}
{{- $tag := default (default .root.Chart.AppVersion .root.Values.image.tag) $image.tag -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{- define "openledger.engineName" -}}
{{- default (include "openledger.componentName" (dict "root" . "component" "engine")) .Values.engine.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "openledger.configMapName" -}}
{{- include "openledger.componentName" (dict "root" . "component" "config") -}}
{{- end -}}

{{- define "openledger.kubernetesJobs" -}}
{{- if eq .Values.jobs.executor "kubernetes" }}true{{ end -}}
{{- end -}}

{{/* The RWX claim shared by model-factory, the attribution-worker and their job pods, if any. */}}
{{- define "openledger.dataClaim" -}}
{{- if .Values.jobs.dataClaim.existingClaim -}}
{{- .Values.jobs.dataClaim.existingClaim -}}
{{- else if .Values.jobs.dataClaim.create -}}
{{- include "openledger.componentName" (dict "root" . "component" "data") -}}
{{- end -}}
{{- end -}}

{{/* What job pods get as environment (OPENLEDGER_KUBERNETES_JOB_ENV_FROM). */}}
{{- define "openledger.jobEnvFrom" -}}
{{- $sources := list (printf "configmap:%s" (include "openledger.configMapName" .)) -}}
{{- $sources = append $sources (printf "secret:%s" .Values.database.existingSecret) -}}
{{- if .Values.objectStore.existingSecret -}}
{{- $sources = append $sources (printf "secret:%s" .Values.objectStore.existingSecret) -}}
{{- end -}}
{{- if .Values.nats.existingSecret -}}
{{- $sources = append $sources (printf "secret:%s" .Values.nats.existingSecret) -}}
{{- end -}}
{{- concat $sources .Values.jobs.extraEnvFrom | uniq | join "," -}}
{{- end -}}

{{/* Whether a ServiceMonitor is rendered: forced by metrics.serviceMonitor.enabled, else when
the Prometheus operator's API is served. */}}
{{- define "openledger.serviceMonitor" -}}
{{- $enabled := .Values.metrics.serviceMonitor.enabled -}}
{{- if kindIs "bool" $enabled -}}
{{- if $enabled }}true{{ end -}}
{{- else if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}
true
{{- end -}}
{{- end -}}

{{/* Credentials and backend addresses from Secrets (env entries). */}}
{{- define "openledger.secretEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
{{- if .Values.nats.existingSecret }}
- name: NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.nats.existingSecret }}
      key: {{ .Values.nats.urlKey }}
{{- end }}
{{- if .Values.objectStore.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.existingSecret }}
      key: {{ .Values.objectStore.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.existingSecret }}
      key: {{ .Values.objectStore.secretAccessKeyKey }}
{{- end }}
{{- end -}}

{{- define "openledger.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "openledger.securityContext" -}}
{{ toYaml .Values.securityContext }}
{{- end -}}

{{/* /tmp and the data directory: the root file system is read-only. Takes (dict "root" $
"claim" NAME) where a claim replaces the data scratch volume. */}}
{{- define "openledger.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.tmpSizeLimit }}
- name: data
{{- if .claim }}
  persistentVolumeClaim:
    claimName: {{ .claim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .root.Values.dataDir.sizeLimit }}
{{- end }}
{{- end -}}

{{- define "openledger.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: {{ .Values.dataDir.path }}
{{- end -}}

{{/* Start-up, liveness and readiness probes on the named port given as the argument. */}}
{{- define "openledger.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ . }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* The ServiceAccount of a component: (dict "root" $ "component" "model-factory"). */}}
{{- define "openledger.serviceAccountName" -}}
{{- include "openledger.componentName" . -}}
{{- end -}}

{{/* Whether a service talks to the Kubernetes API (and so gets a token and a Role). */}}
{{- define "openledger.needsApi" -}}
{{- if and (has .service (list "model-factory" "attribution-worker")) (include "openledger.kubernetesJobs" .root) -}}
true
{{- else if and (eq .service "inference-gateway") .root.Values.engine.enabled -}}
true
{{- end -}}
{{- end -}}
