resource "azurerm_resource_group" "main" {
  name     = "${var.name}-rg"
  location = var.location
  tags     = var.tags
}

# --- networking: one virtual network, a subnet for the cluster's nodes and
# one for private endpoints (Redis, storage), no public access to either.
resource "azurerm_virtual_network" "main" {
  name                = "${var.name}-vnet"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  address_space       = ["10.20.0.0/16"]
  tags                = var.tags
}

resource "azurerm_subnet" "nodes" {
  name                 = "nodes"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = ["10.20.0.0/20"]
}

resource "azurerm_subnet" "endpoints" {
  name                 = "private-endpoints"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = ["10.20.16.0/24"]
}

resource "azurerm_network_security_group" "nodes" {
  name                = "${var.name}-nodes-nsg"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  tags                = var.tags

  security_rule {
    name                       = "https-in"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_range     = "443"
    source_address_prefix      = "Internet"
    destination_address_prefix = "*"
  }
}

resource "azurerm_subnet_network_security_group_association" "nodes" {
  subnet_id                 = azurerm_subnet.nodes.id
  network_security_group_id = azurerm_network_security_group.nodes.id
}

# --- AKS: a system pool, a bidding pool that autoscales, a ClickHouse pool
# (tainted: only ClickHouse runs there).
resource "azurerm_kubernetes_cluster" "main" {
  name                      = "${var.name}-aks"
  location                  = azurerm_resource_group.main.location
  resource_group_name       = azurerm_resource_group.main.name
  dns_prefix                = var.name
  kubernetes_version        = var.kubernetes_version
  sku_tier                  = "Standard"
  automatic_upgrade_channel = "patch"
  oidc_issuer_enabled       = true
  workload_identity_enabled = true
  local_account_disabled    = true
  tags                      = var.tags

  default_node_pool {
    name                         = "system"
    vm_size                      = "Standard_D4s_v5"
    auto_scaling_enabled         = true
    min_count                    = 3
    max_count                    = 5
    vnet_subnet_id               = azurerm_subnet.nodes.id
    only_critical_addons_enabled = true
    zones                        = ["1", "2", "3"]
  }

  identity {
    type = "SystemAssigned"
  }

  azure_active_directory_role_based_access_control {
    azure_rbac_enabled = true
  }

  network_profile {
    network_plugin    = "azure"
    network_policy    = "calico"
    load_balancer_sku = "standard"
  }
}

resource "azurerm_kubernetes_cluster_node_pool" "bidding" {
  name                  = "bidding"
  kubernetes_cluster_id = azurerm_kubernetes_cluster.main.id
  vm_size               = var.bidding_nodes.vm_size
  auto_scaling_enabled  = true
  min_count             = var.bidding_nodes.min
  max_count             = var.bidding_nodes.max
  vnet_subnet_id        = azurerm_subnet.nodes.id
  zones                 = ["1", "2", "3"]
  node_labels           = { "campaign-express/pool" = "bidding" }
  tags                  = var.tags
}

resource "azurerm_kubernetes_cluster_node_pool" "clickhouse" {
  name                  = "clickhouse"
  kubernetes_cluster_id = azurerm_kubernetes_cluster.main.id
  vm_size               = var.clickhouse_nodes.vm_size
  node_count            = var.clickhouse_nodes.count
  vnet_subnet_id        = azurerm_subnet.nodes.id
  zones                 = ["1", "2"]
  node_labels           = { "campaign-express/pool" = "clickhouse" }
  node_taints           = ["campaign-express/pool=clickhouse:NoSchedule"]
  tags                  = var.tags
}

# --- Redis Premium (the hot store), reached only through a private endpoint.
resource "azurerm_redis_cache" "hot" {
  name                          = "${var.name}-redis"
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  sku_name                      = "Premium"
  family                        = "P"
  capacity                      = 2
  minimum_tls_version           = "1.2"
  non_ssl_port_enabled          = false
  public_network_access_enabled = false
  zones                         = ["1", "2"]
  tags                          = var.tags

  redis_configuration {
    maxmemory_policy   = "noeviction"
    aof_backup_enabled = false
  }
}

resource "azurerm_private_endpoint" "redis" {
  name                = "${var.name}-redis-pe"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  subnet_id           = azurerm_subnet.endpoints.id
  tags                = var.tags

  private_service_connection {
    name                           = "redis"
    private_connection_resource_id = azurerm_redis_cache.hot.id
    subresource_names              = ["redisCache"]
    is_manual_connection           = false
  }
}

# --- storage: backups of the management database and the analytics tables.
resource "azurerm_storage_account" "backups" {
  name                            = "${var.name}backup"
  location                        = azurerm_resource_group.main.location
  resource_group_name             = azurerm_resource_group.main.name
  account_tier                    = "Standard"
  account_replication_type        = "ZRS"
  min_tls_version                 = "TLS1_2"
  https_traffic_only_enabled      = true
  allow_nested_items_to_be_public = false
  public_network_access_enabled   = false
  shared_access_key_enabled       = false
  tags                            = var.tags

  blob_properties {
    versioning_enabled = true
    delete_retention_policy {
      days = 30
    }
  }
}

resource "azurerm_storage_container" "backups" {
  name                  = "backups"
  storage_account_id    = azurerm_storage_account.backups.id
  container_access_type = "private"
}

resource "azurerm_private_endpoint" "backups" {
  name                = "${var.name}-backup-pe"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  subnet_id           = azurerm_subnet.endpoints.id
  tags                = var.tags

  private_service_connection {
    name                           = "blob"
    private_connection_resource_id = azurerm_storage_account.backups.id
    subresource_names              = ["blob"]
    is_manual_connection           = false
  }
}
