//! Diesel's view of the tables. Both backends' migrations create exactly these columns.

diesel::table! {
    organisations (id) {
        id -> BigInt,
        name -> Text,
        created_at_us -> BigInt,
        disabled_at_us -> Nullable<BigInt>,
        operator -> Bool,
    }
}

diesel::table! {
    sites (id) {
        id -> BigInt,
        organisation_id -> BigInt,
        name -> Text,
        location -> Text,
        created_at_us -> BigInt,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        organisation_id -> BigInt,
        name -> Text,
        email -> Text,
        role -> Text,
        created_at_us -> BigInt,
        password_hash -> Nullable<Text>,
        password_changed_at_us -> Nullable<BigInt>,
        failed_logins -> Integer,
        locked_until_us -> Nullable<BigInt>,
        disabled_at_us -> Nullable<BigInt>,
        expires_at_us -> Nullable<BigInt>,
        totp_secret -> Nullable<Text>,
        totp_last_step -> Nullable<BigInt>,
        site_id -> Nullable<BigInt>,
        email_factor -> Bool,
        code_failures -> Integer,
        code_locked_until_us -> Nullable<BigInt>,
    }
}

diesel::table! {
    enrolment_tokens (id) {
        id -> BigInt,
        token_hash -> Binary,
        purpose -> Text,
        created_at_us -> BigInt,
        expires_at_us -> BigInt,
        used_at_us -> Nullable<BigInt>,
        revoked_at_us -> Nullable<BigInt>,
    }
}

diesel::table! {
    audit_log (seq) {
        seq -> BigInt,
        occurred_at_us -> BigInt,
        actor_kind -> Text,
        actor_id -> Text,
        source -> Text,
        action -> Text,
        target -> Text,
        outcome -> Text,
        details -> Text,
        prev_hash -> Binary,
        hash -> Binary,
    }
}

diesel::table! {
    audit_append_lock (id) {
        id -> Integer,
        appends -> BigInt,
    }
}

diesel::table! {
    audit_checkpoints (seq) {
        seq -> BigInt,
        hash -> Binary,
        signed_at_us -> BigInt,
        key_id -> Text,
        signature -> Binary,
    }
}

diesel::joinable!(sites -> organisations (organisation_id));
diesel::joinable!(users -> organisations (organisation_id));
diesel::allow_tables_to_appear_in_same_query!(organisations, sites, users);

diesel::table! {
    device_agents (name) {
        name -> Text,
        label -> Text,
        ports -> Text,
        created_at_us -> BigInt,
    }
}

diesel::table! {
    firewall_grants (id) {
        id -> BigInt,
        requester_addr -> Text,
        device_addr -> Text,
        agent -> Text,
        ports -> Text,
        reason -> Text,
        created_by -> Text,
        created_at_us -> BigInt,
        expires_at_us -> BigInt,
        dnat_port -> Nullable<Integer>,
        revoked_at_us -> Nullable<BigInt>,
        revoked_by -> Nullable<Text>,
        applied_at_us -> Nullable<BigInt>,
        closed_at_us -> Nullable<BigInt>,
        close_reason -> Nullable<Text>,
    }
}

diesel::table! {
    sessions (id) {
        id -> BigInt,
        token_hash -> Binary,
        user_id -> BigInt,
        created_at_us -> BigInt,
        last_seen_us -> BigInt,
        source -> Text,
        user_agent -> Text,
        ended_at_us -> Nullable<BigInt>,
        end_reason -> Nullable<Text>,
        second_factor -> Text,
        authenticated_at_us -> Nullable<BigInt>,
    }
}

diesel::table! {
    recovery_codes (id) {
        id -> BigInt,
        user_id -> BigInt,
        code_hash -> Binary,
        used_at_us -> Nullable<BigInt>,
    }
}

diesel::joinable!(sessions -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(sessions, users);
diesel::allow_tables_to_appear_in_same_query!(sessions, organisations);

diesel::table! {
    devices (id) {
        id -> BigInt,
        organisation_id -> BigInt,
        site_id -> BigInt,
        serial -> Text,
        kind -> Text,
        gateway_id -> Nullable<BigInt>,
        secret_hash -> Nullable<Binary>,
        created_at_us -> BigInt,
        revoked_at_us -> Nullable<BigInt>,
        firmware_version -> Nullable<Text>,
        battery_pct -> Nullable<Double>,
        signal_dbm -> Nullable<Double>,
        last_seen_at_us -> Nullable<BigInt>,
        model -> Nullable<Text>,
    }
}

diesel::table! {
    readings (id) {
        id -> BigInt,
        device_id -> BigInt,
        seq -> BigInt,
        metric -> Text,
        value -> Double,
        measured_at_us -> BigInt,
        received_at_us -> BigInt,
    }
}

diesel::table! {
    alert_rules (id) {
        id -> BigInt,
        site_id -> Nullable<BigInt>,
        device_id -> Nullable<BigInt>,
        name -> Text,
        kind -> Text,
        metric -> Text,
        threshold -> Double,
        hysteresis -> Double,
        consecutive -> Integer,
        silent_seconds -> BigInt,
        notify_email -> Text,
        created_at_us -> BigInt,
        measure -> Text,
        for_seconds -> BigInt,
        device_kind -> Nullable<Text>,
        disabled_at_us -> Nullable<BigInt>,
        removed_at_us -> Nullable<BigInt>,
    }
}

diesel::table! {
    alerts (id) {
        id -> BigInt,
        rule_id -> BigInt,
        device_id -> BigInt,
        raised_at_us -> BigInt,
        raised_value -> Nullable<Double>,
        cleared_at_us -> Nullable<BigInt>,
        cleared_value -> Nullable<Double>,
    }
}

diesel::table! {
    connectors (id) {
        id -> BigInt,
        site_id -> BigInt,
        name -> Text,
        url -> Text,
        send_readings -> Bool,
        send_alerts -> Bool,
        secret_sealed -> Binary,
        ca_pem -> Nullable<Text>,
        created_at_us -> BigInt,
        removed_at_us -> Nullable<BigInt>,
        paused_at_us -> Nullable<BigInt>,
    }
}

diesel::table! {
    connector_deliveries (id) {
        id -> BigInt,
        connector_id -> BigInt,
        kind -> Text,
        body -> Text,
        created_at_us -> BigInt,
        attempts -> Integer,
        next_attempt_at_us -> BigInt,
        delivered_at_us -> Nullable<BigInt>,
        dead_at_us -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    device_certificates (id) {
        id -> BigInt,
        device_id -> BigInt,
        fingerprint -> Binary,
        issued_at_us -> BigInt,
        not_after_us -> BigInt,
        revoked_at_us -> Nullable<BigInt>,
    }
}

diesel::joinable!(readings -> devices (device_id));
diesel::joinable!(device_certificates -> devices (device_id));
diesel::joinable!(connector_deliveries -> connectors (connector_id));
diesel::joinable!(alerts -> alert_rules (rule_id));
diesel::joinable!(alerts -> devices (device_id));

diesel::table! {
    api_tokens (id) {
        id -> BigInt,
        token_hash -> Binary,
        user_id -> BigInt,
        name -> Text,
        scopes -> Text,
        created_at_us -> BigInt,
        expires_at_us -> BigInt,
        revoked_at_us -> Nullable<BigInt>,
        last_used_at_us -> Nullable<BigInt>,
    }
}

diesel::joinable!(api_tokens -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(api_tokens, users);

diesel::table! {
    firmware (id) {
        id -> BigInt,
        model -> Text,
        version -> Text,
        security_version -> BigInt,
        file_name -> Text,
        payload_offset -> BigInt,
        payload_size -> BigInt,
        payload_sha256 -> Text,
        signed_by -> Text,
        uploaded_at_us -> BigInt,
    }
}

diesel::table! {
    firmware_rollouts (id) {
        id -> BigInt,
        firmware_id -> BigInt,
        selection -> Text,
        failure_threshold_pct -> Integer,
        state -> Text,
        stop_reason -> Nullable<Text>,
        created_at_us -> BigInt,
        updated_at_us -> BigInt,
    }
}

diesel::table! {
    firmware_rollout_devices (rollout_id, device_id) {
        rollout_id -> BigInt,
        device_id -> BigInt,
        status -> Text,
        detail -> Text,
        updated_at_us -> BigInt,
    }
}

diesel::joinable!(firmware_rollouts -> firmware (firmware_id));
diesel::joinable!(firmware_rollout_devices -> firmware_rollouts (rollout_id));
diesel::joinable!(firmware_rollout_devices -> devices (device_id));
diesel::allow_tables_to_appear_in_same_query!(
    firmware,
    firmware_rollouts,
    firmware_rollout_devices,
    devices
);

diesel::allow_tables_to_appear_in_same_query!(
    devices,
    readings,
    reading_blocks,
    alert_rules,
    alerts,
    sites,
    connectors,
    connector_deliveries,
    device_certificates
);

diesel::table! {
    site_policies (site_id) {
        site_id -> BigInt,
        approval_required -> Bool,
        max_minutes -> Integer,
        allowed_hours -> Text,
        timezone -> Text,
        requester_may_extend -> Bool,
        declared_networks -> Text,
        device_allowlist -> Text,
        remote_enabled -> Bool,
        signal_on -> Bool,
        updated_at_us -> BigInt,
    }
}

diesel::table! {
    site_approvers (site_id, user_id) {
        site_id -> BigInt,
        user_id -> BigInt,
    }
}

diesel::table! {
    machines (id) {
        id -> BigInt,
        organisation_id -> BigInt,
        site_id -> BigInt,
        name -> Text,
        address -> Text,
        agents -> Text,
        created_at_us -> BigInt,
        removed_at_us -> Nullable<BigInt>,
    }
}

diesel::table! {
    access_requests (id) {
        id -> BigInt,
        organisation_id -> BigInt,
        site_id -> BigInt,
        machine_id -> BigInt,
        agent -> Text,
        requester_id -> BigInt,
        requester_addr -> Text,
        address_declared -> Bool,
        requested_seconds -> BigInt,
        reason -> Text,
        state -> Text,
        created_at_us -> BigInt,
        pending_until_us -> BigInt,
        decided_by -> Nullable<BigInt>,
        decided_at_us -> Nullable<BigInt>,
        decision_reason -> Nullable<Text>,
        approved_seconds -> Nullable<BigInt>,
        grant_id -> Nullable<BigInt>,
        ended_at_us -> Nullable<BigInt>,
        end_reason -> Nullable<Text>,
        ended_by -> Nullable<Text>,
    }
}

diesel::table! {
    mail_outbox (id) {
        id -> BigInt,
        recipient -> Text,
        subject -> Text,
        body -> Text,
        about -> Text,
        created_at_us -> BigInt,
        next_attempt_at_us -> BigInt,
        attempts -> Integer,
        sent_at_us -> Nullable<BigInt>,
        failed_at_us -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
    }
}

diesel::joinable!(access_requests -> machines (machine_id));
diesel::joinable!(access_requests -> sites (site_id));
diesel::joinable!(access_requests -> users (requester_id));
diesel::joinable!(machines -> sites (site_id));
diesel::joinable!(site_approvers -> users (user_id));
diesel::joinable!(site_approvers -> sites (site_id));
diesel::joinable!(site_policies -> sites (site_id));
diesel::allow_tables_to_appear_in_same_query!(
    access_requests,
    machines,
    sites,
    site_approvers,
    site_policies,
    firewall_grants,
);
diesel::allow_tables_to_appear_in_same_query!(users, access_requests);
diesel::allow_tables_to_appear_in_same_query!(users, site_approvers);
diesel::allow_tables_to_appear_in_same_query!(users, machines);

diesel::table! {
    email_codes (id) {
        id -> BigInt,
        user_id -> BigInt,
        code_hash -> Binary,
        created_at_us -> BigInt,
        expires_at_us -> BigInt,
        used_at_us -> Nullable<BigInt>,
    }
}

diesel::table! {
    known_browsers (id) {
        id -> BigInt,
        user_id -> BigInt,
        token_hash -> Binary,
        created_at_us -> BigInt,
        last_signed_in_at_us -> BigInt,
        source -> Text,
        user_agent -> Text,
        failed_logins -> Integer,
        locked_until_us -> Nullable<BigInt>,
    }
}

diesel::joinable!(known_browsers -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(known_browsers, users);

diesel::table! {
    settings (name) {
        name -> Text,
        value -> Text,
        updated_at_us -> BigInt,
    }
}

diesel::table! {
    firewall_status (id) {
        id -> Integer,
        started_at_us -> BigInt,
        lease_seconds -> Integer,
        lease_renewed_at_us -> BigInt,
        reconciled_at_us -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    reading_rollups (device_id, metric, width_us, bucket_start_us) {
        device_id -> BigInt,
        metric -> Text,
        width_us -> BigInt,
        bucket_start_us -> BigInt,
        count -> BigInt,
        min -> Double,
        max -> Double,
        sum -> Double,
        last_value -> Double,
        last_measured_at_us -> BigInt,
    }
}

diesel::table! {
    reading_blocks (id) {
        id -> BigInt,
        device_id -> BigInt,
        metric -> Text,
        count -> BigInt,
        first_id -> BigInt,
        last_id -> BigInt,
        min_seq -> BigInt,
        max_seq -> BigInt,
        min_measured_at_us -> BigInt,
        max_measured_at_us -> BigInt,
        min_received_at_us -> BigInt,
        max_received_at_us -> BigInt,
        data -> Binary,
    }
}

diesel::joinable!(reading_blocks -> devices (device_id));

diesel::table! {
    rollup_progress (id) {
        id -> Integer,
        through_reading_id -> BigInt,
    }
}
