//! kube's watcher, restarted from a fresh list when the API server refuses to start a watch
//! with HTTP 410 Gone. kube-runtime (5.0) keeps retrying the same expired resourceVersion
//! forever in that case, so a watch would never recover after its history was compacted; an
//! in-stream ERROR event with code 410 (what kube-apiserver usually sends) is handled by
//! kube-runtime itself. Every watcher of this crate goes through [`restarting_watcher`].

use std::fmt::Debug;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use kube::Resource;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tracing::debug;

pub(crate) fn restarting_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = watcher::Result<Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    stream::unfold(
        (
            api,
            config,
            None::<BoxStream<'static, watcher::Result<Event<K>>>>,
        ),
        |(api, config, inner)| async move {
            let mut inner =
                inner.unwrap_or_else(|| watcher::watcher(api.clone(), config.clone()).boxed());
            let item = inner.next().await?;
            let gone = matches!(
                &item,
                Err(watcher::Error::WatchStartFailed(kube::Error::Api(status))) if status.code == 410
            );
            if gone {
                debug!("watch start answered 410 Gone, relisting");
            }
            Some((item, (api, config, (!gone).then_some(inner))))
        },
    )
}
