output "cluster_name" {
  description = "The AKS cluster (az aks get-credentials -n ...)."
  value       = azurerm_kubernetes_cluster.main.name
}

output "redis_host" {
  description = "The hot store's host name (REDIS_URL=rediss://:<key>@<host>:6380/0)."
  value       = azurerm_redis_cache.hot.hostname
}

output "backup_container" {
  description = "Where backups go."
  value       = "${azurerm_storage_account.backups.primary_blob_endpoint}${azurerm_storage_container.backups.name}"
}
