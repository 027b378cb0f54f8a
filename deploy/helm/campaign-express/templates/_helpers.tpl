{{- define "cx.labels" -}}
app.kubernetes.io/component: {{ .role }}
app.kubernetes.io/name: campaign-express
{{- end -}}
