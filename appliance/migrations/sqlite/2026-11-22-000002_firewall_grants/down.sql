DROP TABLE firewall_grants;
DROP TABLE device_agents;
