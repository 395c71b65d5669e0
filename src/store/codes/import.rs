//! `codes import`: a partner's codes streamed into a pool coupon.
