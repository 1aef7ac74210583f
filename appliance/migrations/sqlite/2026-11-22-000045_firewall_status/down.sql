DROP INDEX firewall_grants_pair;
DROP TABLE firewall_status;
