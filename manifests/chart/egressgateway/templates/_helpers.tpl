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

{{/* Pod template annotations: the hash of the config every daemon reads (the `feature` values, as
the ConfigMap renders them), so that `helm upgrade` changing one rolls every pod: a pod reads its
config only at start. Values a template uses directly (images, replicas) change it already. */}}
{{- define "egressgateway.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/config.yaml") . | sha256sum }}
{{- end -}}
