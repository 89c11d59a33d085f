{{/* One image reference: registry/repository:tag, with the global overrides applied. */}}
{{- define "egressgateway.image" -}}
{{- $registry := .global.imageRegistryOverride | default .image.registry -}}
{{- $tag := .global.imageTagOverride | default .image.tag -}}
{{- if $registry }}{{ $registry }}/{{ end }}{{ .image.repository }}:{{ $tag }}
{{- end -}}

{{/* cert-manager's CA injection into the webhook configurations (controller.tls.method certmanager). */}}
{{- define "egressgateway.webhookAnnotations" -}}
{{- if eq .Values.controller.tls.method "certmanager" -}}
annotations: {cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/egress-webhook}
{{- end -}}
{{- end -}}

{{/* The provided CA (controller.tls.method provided); auto: the webhook patches it in itself. */}}
{{- define "egressgateway.caBundle" -}}
{{- if eq .Values.controller.tls.method "provided" -}}
caBundle: {{ required "controller.tls.provided.tlsCa is required when controller.tls.method is provided" .Values.controller.tls.provided.tlsCa | b64enc }}
{{- end -}}
{{- end -}}
