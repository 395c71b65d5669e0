use super::*;

#[test]
fn a_list_of_hosts_becomes_one_url_per_host_in_its_order() {
    let urls = split_hosts("mysql://root:pw@h1:3306,h2:3307,[::1]:3308/couponsd?ssl-mode=REQUIRED")
        .unwrap();
    assert_eq!(
        urls,
        [
            "mysql://root:pw@h1:3306/couponsd?ssl-mode=REQUIRED",
            "mysql://root:pw@h2:3307/couponsd?ssl-mode=REQUIRED",
            "mysql://root:pw@[::1]:3308/couponsd?ssl-mode=REQUIRED",
        ]
    );
    assert_eq!(host_of(&urls[0]), "h1:3306");
    assert_eq!(
        split_hosts("mysql://h1,h2").unwrap(),
        ["mysql://h1", "mysql://h2"]
    );
    assert_eq!(
        split_hosts("mysql://root@h1:3306/db").unwrap(),
        ["mysql://root@h1:3306/db"]
    );
    assert_eq!(split_hosts("sqlite://x.db").unwrap(), ["sqlite://x.db"]);
}

#[test]
fn an_empty_or_repeated_host_is_refused_by_position() {
    let err = |url| split_hosts(url).unwrap_err().to_string();
    assert_eq!(
        err("mysql://root@h1:3306,,h3:3306/db"),
        "host 2 of the list is empty (hosts are separated by single commas)"
    );
    assert_eq!(
        err("mysql://root@h1:3306,h1:3306/db"),
        "host h1:3306 is listed twice"
    );
}

#[test]
fn a_commit_the_cluster_refused_is_tried_again_like_a_deadlock() {
    use diesel::result::{DatabaseErrorKind, Error};
    let server = |message: &str| {
        Error::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned()))
    };
    let deadlock = "Deadlock found when trying to get lock; try restarting transaction";
    assert!(crate::store::is_retryable(&server(deadlock)));
    let refused_commit = Error::RollbackErrorOnCommit {
        rollback_error: Box::new(Error::BrokenTransactionManager),
        commit_error: Box::new(server(deadlock)),
    };
    assert!(crate::store::is_retryable(&refused_commit));
    let left = server("WSREP has not yet prepared node for application use");
    assert!(crate::store::is_retryable(&left));
    let duplicate = Error::RollbackErrorOnCommit {
        rollback_error: Box::new(Error::BrokenTransactionManager),
        commit_error: Box::new(server("Duplicate entry 'x' for key 'PRIMARY'")),
    };
    assert!(!crate::store::is_retryable(&duplicate));
}

#[test]
fn one_host_has_no_writer_and_a_list_shares_one() {
    assert!(writer("mysql://root@h1:3306/db").unwrap().is_none());
    let a = writer("mysql://root@a1:3306,a2:3306/db").unwrap().unwrap();
    let b = writer("mysql://root@a1:3306,a2:3306/db").unwrap().unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.current(), (0, "mysql://root@a1:3306/db"));
    let before = Instant::now();
    assert!(!a.made_before_switch(before));
    a.switch(0, 1);
    assert_eq!(b.current(), (1, "mysql://root@a2:3306/db"));
    assert!(b.made_before_switch(before));
    assert!(!b.made_before_switch(Instant::now()));
}
