//! Sending one delivery over HTTP and classifying the answer.
