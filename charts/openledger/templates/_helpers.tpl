{{- define "openledger.labels" -}}
app.kubernetes.io/part-of: openledger
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
