// @generated-style Diesel schema, kept in step with `migrations/{mysql,sqlite}` by
// `tests/it/schema.rs`, which loads every column of every table on both backends.
// Both backends share it: types are chosen to read and write the same on each.
#![allow(missing_docs)]

diesel::table! {
    trigger_requests (id) {
        id -> BigInt,
        request_key -> Text,
        user_id -> Text,
        event -> Text,
        attributes -> Nullable<Text>,
        status -> Text,
        outcome -> Nullable<Text>,
        error -> Nullable<Text>,
        detail -> Nullable<Text>,
        user_type -> Nullable<Text>,
        campaign_id -> Nullable<Text>,
        rules_version -> Nullable<Text>,
        attempts -> Integer,
        claim_token -> Nullable<BigInt>,
        created_at -> Timestamp,
        claimed_at -> Nullable<Timestamp>,
        processed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    campaigns (id) {
        id -> Text,
        event -> Text,
        audience -> Text,
        per_user_limit -> BigInt,
        position -> Integer,
        starts_at -> Nullable<Timestamp>,
        ends_at -> Nullable<Timestamp>,
        budget_cents -> Nullable<BigInt>,
        granted_cents -> BigInt,
        updated_at -> Timestamp,
        exhausted_alerted_at -> Nullable<Timestamp>,
        budget_alerted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    coupons (id) {
        id -> Text,
        campaign_id -> Text,
        position -> Integer,
        face_value_cents -> BigInt,
        channel -> Text,
        config_stock -> BigInt,
        stock -> BigInt,
        granted -> BigInt,
        remaining -> BigInt,
        low_stock -> BigInt,
        state -> Text,
        updated_at -> Timestamp,
        running_low_alerted_stock -> Nullable<BigInt>,
    }
}

diesel::table! {
    participations (user_id, event) {
        user_id -> Text,
        event -> Text,
        requests -> BigInt,
    }
}

diesel::table! {
    grants (id) {
        id -> BigInt,
        request_id -> BigInt,
        user_id -> Text,
        event -> Text,
        campaign_id -> Text,
        coupon_id -> Text,
        face_value_cents -> BigInt,
        user_type -> Text,
        rules_version -> Text,
        granted_at -> Timestamp,
        code -> Nullable<Text>,
        valid_from -> Nullable<Timestamp>,
        expires_at -> Nullable<Timestamp>,
        state -> Text,
        redeemed_at -> Nullable<Timestamp>,
        reminded_at -> Nullable<Timestamp>,
        redemption_room -> Nullable<Binary>,
    }
}

diesel::table! {
    grant_updates (id) {
        id -> BigInt,
        update_key -> Text,
        code -> Nullable<Text>,
        grant_id -> Nullable<BigInt>,
        action -> Text,
        reason -> Nullable<Text>,
        occurred_at -> Nullable<Timestamp>,
        status -> Text,
        error -> Nullable<Text>,
        attempts -> Integer,
        created_at -> Timestamp,
        processed_at -> Nullable<Timestamp>,
        finish_room -> Nullable<Binary>,
    }
}

diesel::table! {
    grant_transitions (id) {
        id -> BigInt,
        grant_id -> BigInt,
        from_state -> Text,
        to_state -> Text,
        update_key -> Nullable<Text>,
        job -> Nullable<Text>,
        operator -> Nullable<Text>,
        reason -> Nullable<Text>,
        at -> Timestamp,
    }
}

diesel::table! {
    campaign_days (campaign_id, day) {
        campaign_id -> Text,
        day -> Text,
        granted_cents -> BigInt,
    }
}

diesel::table! {
    coupon_codes (id) {
        id -> BigInt,
        coupon_id -> Text,
        code -> Text,
        grant_id -> Nullable<BigInt>,
        imported_at -> Nullable<Timestamp>,
        issued_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    deliveries (id) {
        id -> BigInt,
        webhook_id -> Text,
        channel -> Text,
        event_type -> Text,
        grant_id -> Nullable<BigInt>,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        last_status -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        delivered_at -> Nullable<Timestamp>,
        hold_token -> Nullable<BigInt>,
        delivery_room -> Nullable<Binary>,
    }
}

diesel::table! {
    delivery_attempts (id) {
        id -> BigInt,
        delivery_id -> BigInt,
        attempt -> Integer,
        attempted_at -> Timestamp,
        status_code -> Nullable<Integer>,
        error -> Nullable<Text>,
        duration_ms -> BigInt,
    }
}

diesel::table! {
    channel_states (channel) {
        channel -> Text,
        disabled_at -> Nullable<Timestamp>,
        reason -> Nullable<Text>,
    }
}

diesel::table! {
    coupon_rotations (id) {
        id -> BigInt,
        campaign_id -> Text,
        from_coupon -> Text,
        to_coupon -> Nullable<Text>,
        reason -> Text,
        remaining -> BigInt,
        rotated_at -> Timestamp,
    }
}

diesel::table! {
    job_leases (job) {
        job -> Text,
        holder -> Nullable<Text>,
        held_until -> Nullable<Timestamp>,
        last_tick -> Nullable<Timestamp>,
        last_finished_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    stock_samples (coupon_id, sampled_at) {
        coupon_id -> Text,
        sampled_at -> Timestamp,
        remaining -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    coupon_rotations,
    job_leases,
    trigger_requests,
    campaigns,
    coupons,
    participations,
    grants,
    deliveries,
    delivery_attempts,
    channel_states,
    coupon_codes,
    grant_updates,
    grant_transitions,
    campaign_days,
    stock_samples,
);
