"""The reference bank grown from the service's own traffic, opt-in per tenant
(`BANK_FROM_TRAFFIC_TENANTS`): which /v1/classify answers label an image (`selection`), the
background writer that keeps them (`recorder`), and the bank a train job gets (`layered`)."""
