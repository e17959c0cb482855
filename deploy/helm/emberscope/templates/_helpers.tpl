{{/* The chart's name. */}}
{{- define "emberscope.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name, prefixed with the chart name unless it holds it. */}}
{{- define "emberscope.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "emberscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "emberscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "emberscope.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "emberscope.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "emberscope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "emberscope.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "emberscope.priorityClassName" -}}
{{- if .Values.priorityClass.create -}}
{{- default (include "emberscope.fullname" .) .Values.priorityClassName -}}
{{- else -}}
{{- .Values.priorityClassName -}}
{{- end -}}
{{- end -}}

{{/* Non-empty before Kubernetes 1.30, where the AppArmor profile is an annotation, not a field. */}}
{{- define "emberscope.appArmorAnnotation" -}}
{{- if semverCompare "<1.30.0-0" .Capabilities.KubeVersion.Version -}}true{{- end -}}
{{- end -}}
