variable "name" {
  type        = string
  description = "Prefix of every resource's name (lower-case letters and digits)."
  default     = "campaignexpress"
  validation {
    condition     = can(regex("^[a-z][a-z0-9]{2,15}$", var.name))
    error_message = "name: 3-16 lower-case letters and digits, starting with a letter."
  }
}

variable "location" {
  type        = string
  description = "Azure region."
  default     = "westeurope"
}

variable "kubernetes_version" {
  type        = string
  description = "AKS Kubernetes version (the manifests target 1.30 and later)."
  default     = "1.30"
}

variable "bidding_nodes" {
  type        = object({ min = number, max = number, vm_size = string })
  description = "The bidding pool: 10-40 bidding pods of 1-2 cores each (deploy/kubernetes)."
  default     = { min = 3, max = 12, vm_size = "Standard_F8s_v2" }
}

variable "clickhouse_nodes" {
  type        = object({ count = number, vm_size = string })
  description = "The ClickHouse pool: one node per replica (2)."
  default     = { count = 2, vm_size = "Standard_E8s_v5" }
}

variable "tags" {
  type        = map(string)
  description = "Tags on every resource."
  default     = { app = "campaign-express" }
}
